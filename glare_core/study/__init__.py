"""The study: the experiment tables, their resumable runner, and the results the book reads.

One module a layer; each imports only the ones above it (``tests/test_imports.py`` checks it):

    ``tables``    the tables as data: rows x datasets x seeds, training scale, probe protocol
    ``configs``   what a cell runs: training config, probe / light-decoder protocol, datasets, cost key
    ``store``     the result files: cell JSONs read, checked and written; done / stale cells; benchmark files
    ``stats``     mean and std over seeds, seed-paired differences, t-intervals, the speedup decomposition
    ``report``    CSV and markdown tables, status lines, the sentences chapter 9 prints
    ``analysis``  the pre-registered study's analysis: paired t-tests, Holm, Bonferroni intervals, McNemar
    ``figures``   the figures of results (matplotlib)
    ``timing``    measured times, estimates per cell, the dry-run plan
    ``runner``    running cells: pre-training, probe or light decoder, k-NN; ``glare experiment``

Results live in :func:`glare_core.paths.results_dir` (``results/`` of the checkout) unless a function is
given another folder.
"""
