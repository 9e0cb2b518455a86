"""glare_core: GLARE (Global, Local And Regional Enforcement) continual self-supervised pre-training.

One concept per module; the book's chapters follow the same order.

The model
    ``backbone``        timm ViT wrapper: [CLS], patch tokens, grid, last-block [CLS] attention
    ``uniadapter``      UniAdapter, the only weights GLARE trains
    ``lora``            LoRA, the low-rank alternative
    ``tuning``          adapter / LoRA / full fine-tuning switch, parameter counts
    ``weights``         named base models: registry, loading, checkpoint formats, preparing the cache, the
                        offline DINOv2 (ONNX -> timm)

The GLARE objective
    ``views``           two global views per image with their crop boxes and flips
    ``patch_augment``   patch-level augmentations (blur, mask, noise, jitter) and their cell masks
    ``heads``           the DINO projection head
    ``losses``          ``global_consistency`` (G), ``local_consistency`` (L), ``regional_consistency`` (R)
    ``teacher``         student with adapters, EMA teacher, adapter export
    ``objective``       one GLARE step: views -> teacher -> student -> L_G + L_L + L_R
    ``schedules``       per-step schedules: learning rate, weight decay, EMA momentum, teacher temperature

Pre-training
    ``config``          ``TrainConfig`` and presets (smoke, demo, cpu, colab_t4, paper)
    ``train``           the training loop: resumable, mixed precision, data-parallel
    ``feed``            the pre-training data feed, its order fixed by the step
    ``trunk``           the cached frozen trunk (this project's CPU design)
    ``checkpoint``      what a run's checkpoint holds, how it is written and restored
    ``run_report``      ``metrics.jsonl``, the console lines, ``summary.json``
    ``runs``            run folders: checks before writing, atomic writes, safe checkpoint reading
    ``rng``             one seed for every generator, and their states for an exact resume
    ``distributed``     torchrun / DistributedDataParallel helpers
    ``precision``       the autocast precision ``auto`` picks from a measurement; what stays float32
    ``telemetry``       did pre-training move the model: adapter share, token change

Evaluation and the study
    ``data``            CamVid, IDD-Lite, Cityscapes, ADE20K, LoveDA, Hugging Face, synthetic; downloads
    ``features``        frozen-feature extraction with an on-disk cache
    ``probe``           linear probe and light decoder heads
    ``metrics``         confusion matrix, mIoU, per-class IoU, pixel accuracy
    ``evaluation``      the segmentation protocol every compared backbone goes through
    ``knn``             forgetting: k-NN accuracy on Tiny-ImageNet
    ``bench``           step throughput, memory and fraction of the measured matmul peak
    ``study``           the result tables (main, ablations, neighbours, ...): resumable cells, the results
                        the book reads (tables, configs, store, stats, report, figures, timing, runner)
    ``plots``           figures of predictions (segmentation maps side by side)

The neighbours (``neighbours/``: the other seed methods, for comparison)
    ``segmentation``    a light decoder trained on frozen or adapted features, with optional extra terms
    ``pipa``            PiPa: pixel-wise supervised contrast and patch-wise consistency
    ``ssr``             SSR: a training-only cross-attention branch from a frozen encoder

Around it
    ``paths``           where data, weights and runs live
    ``provenance``      which code produced a result: the git commit, uncommitted changes
    ``system``          what machine this is: the record every result carries, ``glare system``
    ``errors``          errors a user can fix, and the command's exit codes
    ``notebook``        helpers for the book's chapters
    ``bootstrap``       the chapters' set-up: install in Colab, data, base model
    ``sources``         every download URL, each overridable by an environment variable
    ``diagrams``        boxes and arrows of the book's schematic figures
    ``cli``             the ``glare`` command (subcommands in ``commands/``)
"""

__version__ = "0.1.0"
