"""The cached frozen trunk: the full-depth model and losses; a keyed, verified bank; exact resume."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch

from glare_core.backbone import create_backbone
from glare_core.config import preset
from glare_core.distributed import DistInfo
from glare_core.heads import HeadConfig
from glare_core.objective import GlareObjective, ObjectiveConfig
from glare_core.patch_augment import PatchAugConfig
from glare_core.runs import load_checkpoint
from glare_core.teacher import StudentTeacher, StudentTeacherConfig, apply_adapter
from glare_core.trunk import (
    BankError,
    TrunkBatch,
    bank_key,
    bank_path,
    check_trunk,
    encode_entries,
    entry_seed,
    pair_for,
    prepare_bank,
)
from glare_core.views import ViewConfig

HEAD = HeadConfig(out_dim=64, hidden_dim=48, bottleneck_dim=16)
N = 3  # trunk blocks of the 6-block test ViT


def model(trunk_blocks: int = N, tuning: str = "adapter", head: HeadConfig = HEAD) -> StudentTeacher:
    """The tiny ViT with non-zero adapters (student and teacher different), so the tail's adapters matter."""
    torch.manual_seed(0)
    b = create_backbone("test_vit").requires_grad_(False).eval()
    m = StudentTeacher(b, StudentTeacherConfig(tuning=tuning, rank=8, head=head, trunk_blocks=trunk_blocks))
    with torch.no_grad():
        for p in m.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
        m.update_teacher(0.5)
        for p in m.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    return m


def objective(**kw) -> GlareObjective:
    views = ViewConfig(global_size=48)
    return GlareObjective(ObjectiveConfig(views=views, warmup_teacher_temp_steps=10, **kw))


VARIANTS = {
    "G+L+R": {},
    "G (DINO-only)": dict(use_local=False, use_regional=False),
    "local-crossview": dict(local_variant="crossview"),
    "uniform-geometric": dict(sampling="uniform", correspondence="geometric"),
    "teacher-query": dict(region_query="teacher"),
    "overlap-only": dict(region_overlap_only=True),
    "mask-mean": dict(patch_aug=PatchAugConfig(kind="mask_mean", selection="random")),
    # every corruption the bank can hold (blur is the default above; mask_token is refused, see below)
    "noise": dict(patch_aug=PatchAugConfig(kind="noise")),
    "jitter": dict(patch_aug=PatchAugConfig(kind="jitter")),
    "strong-noise": dict(patch_aug=PatchAugConfig(kind="noise", noise_std=0.5, ratio=(0.4, 0.7))),
    "strong-mask-mean": dict(patch_aug=PatchAugConfig(kind="mask_mean", ratio=0.6)),
    # the weights of the terms, and a patch head of its own for L and R
    "lambdas": dict(lambda_global=0.5, lambda_local=2.0, lambda_regional=0.25),
    "separate-patch-head": dict(
        head=HeadConfig(out_dim=64, hidden_dim=48, bottleneck_dim=16, separate_patch_head=True)
    ),
}


def cached_batch(m: StudentTeacher, views, Xs, masks, storage=torch.float32) -> TrunkBatch:
    """The trunk tokens of given views (what the bank stores), rounded to ``storage``."""
    with torch.no_grad():
        clean = [m.student.trunk(x, N)[0].to(storage).float() for x in views.globals]
        corrupted = [m.student.trunk(x, N)[0].to(storage).float() for x in Xs]
    grid = (views.globals[0].shape[-2] // m.patch_size,) * 2
    return TrunkBatch(clean, corrupted, masks, views.boxes, views.flips, grid, N)


# ---------------------------------------------------------------------------- the model
@pytest.mark.parametrize("tuning", ["adapter", "lora", "full"])
def test_trunk_blocks_are_frozen_and_adapter_free(tuning):
    m = model(tuning=tuning)
    for net in (m.student, m.teacher):
        for i, block in enumerate(net.vit.blocks):
            names = [n for n, _ in block.named_modules()]
            tuned = any(
                ".adapter" in f".{n}" or "lora" in type(mod).__name__.lower()
                for n, mod in block.named_modules()
            )
            assert tuned == (i >= N and tuning != "full"), (i, names)
    trained = [n for n, p in m.student.vit.named_parameters() if p.requires_grad]
    assert trained and all(n.startswith("norm.") or int(n.split(".")[1]) >= N for n in trained), trained
    # the trunk's tensors are the very same objects in student and teacher
    for ps, pt in zip(m.student.vit.blocks[:N].parameters(), m.teacher.vit.blocks[:N].parameters()):
        assert ps is pt


def test_tail_forward_on_trunk_tokens_equals_the_full_forward():
    m = model()
    x = torch.rand(4, 3, 48, 48)
    with torch.no_grad():
        for net in (m.student, m.teacher):
            full = net(x, return_attn=True)
            tokens, grid = net.trunk(x, N)
            tail = net.forward_tokens(tokens, grid, start_block=N, return_attn=True)
            for a, b in ((full.cls, tail.cls), (full.patches, tail.patches), (full.attn, tail.attn)):
                assert torch.equal(a, b)
            with pytest.raises(ValueError, match="do not fit a 4x4 grid"):
                net.forward_tokens(tokens, (4, 4), start_block=N)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_losses_and_gradients_match_the_full_depth_objective(variant):
    """Same views (one generator), same model: the objective on cached float32 trunk tokens gives the loss,
    every term and every gradient of the full-depth objective; fp16 storage only rounds."""
    images = torch.rand(3, 3, 64, 64)
    kw = dict(VARIANTS[variant])
    head = kw.pop("head", HEAD)
    results = {}
    for path in ("full", "fp32", "fp16"):
        m, obj = model(head=head), objective(**kw)
        g = torch.Generator().manual_seed(7)
        if path == "full":
            loss, logs = obj(m, images, step=2, generator=g)
        else:
            views, Xs, masks, _ = obj.prepare_views(images, m.patch_size, g)  # the same draws as "full"
            dtype = torch.float32 if path == "fp32" else torch.float16
            loss, logs = obj(m, cached_batch(m, views, Xs, masks, dtype), step=2, generator=g)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
        centres = {k: v.clone() for k, v in obj.state_dict().items()}
        results[path] = (logs, grads, centres)
    logs, grads, centres = results["full"]
    terms = {"loss_global"} | ({"loss_local", "loss_regional"} if variant != "G (DINO-only)" else set())
    assert terms <= set(logs)
    for path, (tol, gtol) in {"fp32": (1e-6, 1e-5), "fp16": (2e-3, 5e-2)}.items():
        logs_c, grads_c, centres_c = results[path]
        for k in logs:
            assert logs_c[k] == pytest.approx(logs[k], rel=tol, abs=tol), (path, k)
        assert grads.keys() == grads_c.keys() and len(grads) > 0
        for k in grads:
            scale = grads[k].abs().max().clamp_min(1e-12)
            assert ((grads[k] - grads_c[k]).abs().max() / scale) <= gtol, (path, k)
        for k in centres:
            torch.testing.assert_close(centres_c[k], centres[k], rtol=tol, atol=tol)


def test_the_mask_token_corruption_is_refused_on_cached_tokens():
    """The learned mask token enters before block 0: the bank cannot hold its trunk output (it changes with
    the token), so a trunk batch with it is refused, with the kinds that work named."""
    m = model()
    obj = objective(patch_aug=PatchAugConfig(kind="mask_token"))
    views, Xs, masks, _ = obj.prepare_views(torch.rand(2, 3, 64, 64), m.patch_size, torch.Generator())
    with pytest.raises(ValueError, match="'mask_token'.*before block 0.*'mask_mean' or 'blur'"):
        obj(m, cached_batch(m, views, Xs, masks), step=0)


def test_bank_entries_are_the_objectives_views_through_the_trunk():
    m, obj = model(), objective()
    images = torch.rand(2, 3, 64, 64)
    seeds = [entry_seed(5, i, 0) for i in range(2)]
    with torch.no_grad():
        out = encode_entries(m, obj, images, seeds, N, torch.float32)
    assert out["clean"].shape == (2, 2, 1 + 9, 64) and out["masks"].shape == (2, 2, 9)
    for e in range(2):
        g = torch.Generator().manual_seed(seeds[e])
        views, Xs, masks, _ = obj.prepare_views(images[e : e + 1], m.patch_size, g)
        for v in range(2):
            with torch.no_grad():
                clean, corrupted = m.student.trunk(views.globals[v], N)[0], m.student.trunk(Xs[v], N)[0]
            torch.testing.assert_close(out["clean"][e, v], clean[0], rtol=1e-6, atol=1e-6)
            torch.testing.assert_close(out["corrupted"][e, v], corrupted[0], rtol=1e-6, atol=1e-6)
            assert torch.equal(out["masks"][e, v], masks[v][0])
            assert torch.equal(out["boxes"][e, v], views.boxes[v, 0].float())
            assert bool(out["flips"][e, v]) == bool(views.flips[v, 0])


def test_pairs_cycle_through_the_bank():
    for index in range(5):
        assert sorted(pair_for(e, index, 4, seed=3) for e in range(4)) == [0, 1, 2, 3]
        assert sorted(pair_for(e, index, 4, seed=3) for e in range(4, 8)) == [0, 1, 2, 3]


def test_trunk_settings_are_checked():
    cfg = preset("smoke")
    cfg.trunk_blocks = 6
    with pytest.raises(ValueError, match="choose 1 .. 5"):
        check_trunk(cfg, 6)
    cfg.trunk_blocks = 2
    cfg.objective.views.n_local = 2
    with pytest.raises(ValueError, match="n_local=0"):
        check_trunk(cfg, 6)
    cfg.objective.views.n_local = 0
    cfg.objective.patch_aug = PatchAugConfig(kind="mask_token")
    with pytest.raises(ValueError, match="mask_token"):
        check_trunk(cfg, 6)


def test_exported_adapter_of_a_trunk_model_applies_to_a_fresh_base(tmp_path: Path):
    m = model()
    path = m.export_adapter(tmp_path / "adapter.safetensors")
    torch.manual_seed(0)
    fresh = apply_adapter(create_backbone("test_vit"), path)
    assert not any(hasattr(b, "adapter") for b in fresh.vit.blocks[:N])
    x = torch.rand(2, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x).patches, m.teacher(x).patches, rtol=0, atol=0)
    wrong = StudentTeacher(
        create_backbone("test_vit").requires_grad_(False), StudentTeacherConfig(rank=8, head=HEAD)
    )
    with pytest.raises(ValueError, match="trunk_blocks=3"):
        wrong.load_adapter(path)


@pytest.mark.parametrize("tuning", ["adapter", "lora", "full"])
def test_a_block_inside_the_trunk_is_a_control_that_equals_the_base(tmp_path: Path, tuning: str):
    """Probe readouts: the features of a block below ``trunk_blocks`` of an adapted model are the base's, bit
    for bit (a control block for the tables), while the last block's differ. Every readout passes through
    the final LayerNorm, which full fine-tuning trains: there the control block equals the base's only with
    the base's final norm put back (why the study's full fine-tuning cells differ at block 7).
    """
    from glare_core.features import _forward_features

    m = model(tuning=tuning)
    path = m.export_adapter(tmp_path / "adapter.safetensors")
    torch.manual_seed(0)
    base = create_backbone("test_vit").eval()
    torch.manual_seed(0)
    adapted = apply_adapter(create_backbone("test_vit"), path)
    x = torch.rand(2, 3, 48, 48)
    control, last = [N - 1], [base.depth - 1]
    with torch.no_grad():
        assert not torch.equal(_forward_features(adapted, x, last), _forward_features(base, x, last))
        same = torch.equal(_forward_features(adapted, x, control), _forward_features(base, x, control))
        assert same == (tuning != "full")
        adapted.vit.norm.load_state_dict(base.vit.norm.state_dict())
        torch.testing.assert_close(
            _forward_features(adapted, x, control), _forward_features(base, x, control), rtol=0, atol=0
        )


# ---------------------------------------------------------------------------- the bank on disk
def trunk_cfg():
    cfg = preset("smoke")
    cfg.trunk_blocks, cfg.trunk_pairs, cfg.precision = N, 2, "fp32"
    cfg.limit_seed = 0  # the same images whatever the run's seed (the synthetic scenes are drawn from it)
    return cfg


def built_run(cfg):
    from glare_core.train import build_feed, build_run

    info = DistInfo(device=torch.device("cpu"))
    loader, n = build_feed(cfg, info, 0)
    return build_run(cfg, info, cfg.total_steps(n), verbose=False), loader.dataset.dataset


def test_bank_is_keyed_reused_across_seeds_and_verified(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("GLARE_CACHE_DIR", str(tmp_path / "cache"))
    cfg = trunk_cfg()
    run, dataset = built_run(cfg)
    bank, record = prepare_bank(run, dataset, verbose=False)
    assert record["built"] and len(bank) == 16 * 2 and record["storage"] == "fp16"
    path = Path(record["path"])
    assert path.parent == tmp_path / "cache" / "trunk"

    # Another arm (DINO-only, other weights and learning rate): the same bank, loaded and verified.
    arm = copy.deepcopy(cfg)
    arm.objective.use_local = arm.objective.use_regional = False
    arm.objective.lambda_global, arm.lr = 2.0, 1e-2
    run1, dataset1 = built_run(arm)
    bank1, record1 = prepare_bank(run1, dataset1, verbose=False)
    assert not record1["built"] and record1["path"] == str(path)
    for k in bank.tensors:
        assert torch.equal(bank.tensors[k], bank1.tensors[k]), k
    batch = bank1.batch([0, 3])
    assert batch.corrupted is batch.clean and batch.masks == []  # DINO-only: the student sees clean views
    # Another seed: the run's seed is not in the key (the random test base is drawn from the seed, so compare
    # keys for the same base and images; a named base is the same file for every seed).
    reseeded = copy.deepcopy(cfg)
    reseeded.seed = 1
    assert bank_key(reseeded, run.model, dataset, "fp32", "fused") == bank_key(
        cfg, run.model, dataset, "fp32", "fused"
    )

    changed = copy.deepcopy(cfg)
    changed.trunk_seed = 1  # the bank's own seed is in the key
    key2 = bank_key(changed, run.model, dataset, "fp32", "fused")
    assert bank_path(key2) != path

    # a bank under another key's name is refused, naming the file
    shutil.copy(path, bank_path(key2))
    changed_run, _ = built_run(changed)
    with pytest.raises(BankError, match=r"bank-.*different key.*seed"):
        prepare_bank(changed_run, dataset, verbose=False)

    # a damaged bank is refused, naming the file
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BankError, match=rf"{path.name}.*checksum mismatch"):
        prepare_bank(run, dataset, verbose=False)


def test_trunk_run_resumes_bitwise_equal(tmp_path: Path, monkeypatch):
    from glare_core import objective as objective_mod
    from glare_core.train import pretrain

    monkeypatch.setenv("GLARE_CACHE_DIR", str(tmp_path / "cache"))
    cfg = trunk_cfg()
    cfg.precision = "auto"
    cfg.steps, cfg.checkpoint_every, cfg.head_warmup_steps = 6, 3, 2
    full = pretrain(cfg, tmp_path / "full")
    assert full["trunk"]["built"]

    original = objective_mod.GlareObjective.__call__

    def interrupted(self, model, images, step):
        assert isinstance(images, TrunkBatch)
        if step == 4:
            raise KeyboardInterrupt
        return original(self, model, images, step)

    with monkeypatch.context() as mp:
        mp.setattr(objective_mod.GlareObjective, "__call__", interrupted)
        with pytest.raises(KeyboardInterrupt):
            pretrain(cfg, tmp_path / "resumed")
    resumed = pretrain(cfg, tmp_path / "resumed", resume=True)
    assert not resumed["trunk"]["built"]

    a = load_checkpoint(tmp_path / "full" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")
    assert a["step"] == b["step"] == 6
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for k, v in (a["objective"] or {}).items():
        assert torch.equal(v, b["objective"][k]), k
    assert a["trunk_bank"] == b["trunk_bank"] == full["trunk"]["sha256"]
    la = [json.loads(x)["loss"] for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(x)["loss"] for x in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert la == lb and len(la) == 6


def test_the_benchmark_times_the_trunk_step_and_its_bank(monkeypatch):
    from glare_core import bench, train

    seen = []
    real = train.train_step

    def recording(run, images, step):
        seen.append(type(images).__name__)
        return real(run, images, step)

    monkeypatch.setattr(train, "train_step", recording)
    assert bench.variant_spec("glare_trunk8", "cpu") == ("glare", "auto", 8)
    with pytest.raises(ValueError, match="glare_trunk<n>"):
        bench.variant_spec("glare_trunk", "cpu")
    cfg = trunk_cfg()
    cfg.trunk_pairs = 1
    step, used = bench.build_step(cfg, total_steps=10)
    step(0)
    assert seen == ["TrunkBatch"] and used == "fp32"
    assert step.build_bank() > 0


def test_a_run_resumes_only_on_its_own_bank(tmp_path: Path, monkeypatch):
    """A bank rebuilt with other contents under the same key (as another library version could) is refused
    on resume: the checkpoint records the SHA-256 of the bank its steps read."""
    from glare_core import trunk as trunk_mod
    from glare_core.train import pretrain

    monkeypatch.setenv("GLARE_CACHE_DIR", str(tmp_path / "cache"))
    cfg = trunk_cfg()
    cfg.steps, cfg.checkpoint_every = 2, 1
    summary = pretrain(cfg, tmp_path / "run")
    Path(summary["trunk"]["path"]).unlink()
    monkeypatch.setattr(trunk_mod, "entry_seed", lambda seed, index, pair: 1000 + 2 * index + pair)
    with pytest.raises(BankError, match=r"checkpoint.pt was trained on the trunk bank"):
        pretrain(cfg, tmp_path / "run", resume=True)


def test_run_folders_recorded_before_the_trunk_still_match(tmp_path: Path):
    from glare_core.study.runner import check_run_config
    from glare_core.study.store import OBJECTIVE_ADDED, TRAIN_ADDED, ResultFileError

    cfg = preset("smoke")
    old = {k: v for k, v in cfg.to_dict().items() if k not in TRAIN_ADDED}
    old["objective"] = {k: v for k, v in old["objective"].items() if k not in OBJECTIVE_ADDED}
    (tmp_path / "config.json").write_text(json.dumps(old))
    check_run_config(tmp_path, cfg)  # the added keys' defaults reproduce the older runs
    cfg.trunk_blocks = 2
    with pytest.raises(ResultFileError, match="trunk_blocks"):
        check_run_config(tmp_path, cfg)
    cfg.trunk_blocks = None
    cfg.objective.region_overlap_only = True
    with pytest.raises(ResultFileError, match="objective"):
        check_run_config(tmp_path, cfg)
