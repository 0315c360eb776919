"""End to end on a tiny synthetic dataset: baseline -> stored CAMs -> PixelCAM -> test metrics."""

import json
import math

import pytest
import torch

from pixelcam.builders import dataset, new_model
from pixelcam.config import load_config
from pixelcam.evaluate import resolve_device
from pixelcam.pipelines import get_baseline, get_negev, get_or_train, get_unet
from pixelcam.report import main_table, run_table
from pixelcam.train import FilledBatchSampler, PhaseSpec, fit, train_loader

TINY = {
    "synthetic_n_train": 8, "synthetic_n_valcl": 4, "synthetic_n_test": 4,
    "synthetic_n_valpx_per_class": 1, "synthetic_width": 64, "synthetic_height": 48,
    "image_size": 48, "resize_size": 56, "backbone": "resnet18", "epochs": 2, "batch_size": 4,
    "eval_batch_size": 8, "lr": 0.01, "device": "cpu",
}


class _Indices(torch.utils.data.Dataset):
    """n items that only carry their index, with a random "augmentation" from torch's RNG."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        return {"index": i, "crop": torch.rand(())}


def _epochs(loader, epochs: int) -> list[list[list[int]]]:
    out = []
    for epoch in range(epochs):
        if hasattr(loader.batch_sampler, "set_epoch"):
            loader.batch_sampler.set_epoch(epoch)
        out.append([batch["index"].tolist() for batch in loader])
    return out


def test_training_batches_are_full_glas_67_by_32():
    """GlaS: 67 = 32 + 32 + 3. Every batch holds 32 images, every image comes once per epoch,
    and the repeats are the last partial batch's own 3 images, cyclically (_fill_minibatch)."""
    cfg = load_config(None, {"batch_size": 32, "num_workers": 0})
    epochs = _epochs(train_loader(_Indices(67), cfg, torch.device("cpu"), seed=0), 3)
    for batches in epochs:
        assert [len(b) for b in batches] == [32, 32, 32]
        flat = [i for b in batches for i in b]
        assert sorted(set(flat)) == list(range(67))
        first = batches[0] + batches[1]
        assert len(set(first)) == 64  # the full batches repeat nothing
        last = batches[2]
        own = last[:3]
        assert len(set(own)) == 3 and not set(own) & set(first)
        assert last == (own * 11)[:32]  # i0 i1 i2 i0 i1 i2 ...: 11, 11 and 10 copies
    assert epochs[0] != epochs[1]  # reshuffled every epoch
    # deterministic under the configured seed
    again = _epochs(train_loader(_Indices(67), cfg, torch.device("cpu"), seed=0), 3)
    assert again == epochs
    # a repeated image is loaded afresh: its own random augmentation
    last = list(train_loader(_Indices(67), cfg, torch.device("cpu"), seed=0))[-1]
    assert len(set(last["index"].tolist())) == 3 and len(set(last["crop"].tolist())) == 32


def test_a_split_smaller_than_the_batch_is_one_filled_batch():
    batches = list(FilledBatchSampler(5, 8, seed=1))
    assert len(batches) == 1 and sorted(set(batches[0])) == list(range(5))
    assert batches[0] == (batches[0][:5] * 2)[:8]
    assert list(FilledBatchSampler(0, 8)) == [] and len(FilledBatchSampler(0, 8)) == 0
    assert list(FilledBatchSampler(64, 32, seed=0)) != []  # no filling when it divides
    assert all(len(set(b)) == 32 for b in FilledBatchSampler(64, 32, seed=0))


@pytest.mark.parametrize("world", [2, 4])
def test_ranks_share_every_filled_global_batch(world):
    """Under torchrun each rank takes 32/world images of every global batch; together they are
    the one-process global batches, filled before the split, for any world size."""
    for epoch in range(2):
        whole = FilledBatchSampler(67, 32, seed=3)
        whole.set_epoch(epoch)
        reference = list(whole)
        shares = []
        for rank in range(world):
            part = FilledBatchSampler(67, 32, seed=3, rank=rank, world=world)
            part.set_epoch(epoch)
            shares.append(list(part))
        assert all(len(s) == 3 and all(len(b) == 32 // world for b in s) for s in shares)
        for step, batch in enumerate(reference):
            joined = [shares[r][step][j] for j in range(32 // world) for r in range(world)]
            assert joined == batch
    with pytest.raises(ValueError, match="multiple"):
        FilledBatchSampler(67, 30, world=4)


def test_ranks_take_the_distributed_samplers_order_when_nothing_is_filled():
    """n a multiple of the batch: exactly the DistributedSampler + DataLoader batches."""
    from torch.utils.data import DataLoader, DistributedSampler

    data = list(range(64))
    for world in (1, 2, 4):
        for rank in range(world):
            ds = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=True, seed=3)
            ours = FilledBatchSampler(64, 32, seed=3, rank=rank, world=world)
            for epoch in range(2):
                ds.set_epoch(epoch)
                ours.set_epoch(epoch)
                theirs = [b.tolist() for b in DataLoader(data, batch_size=32 // world,
                                                         sampler=ds)]
                assert list(ours) == theirs


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    cfg = load_config(None, {**TINY, "cache_dir": str(cache)})
    logs: list[str] = []
    runs = get_or_train(cfg, log=logs.append)
    return cfg, runs, logs


def test_both_phases_train_and_evaluate(trained):
    cfg, runs, logs = trained
    for kind in ("baseline", "pixelcam"):
        run = runs[kind]
        assert run.kind == kind and not run.reused
        assert (run.dir / "results.json").exists()
        assert len(run.results["history"]) == cfg.epochs + 1  # epoch 0 is a candidate
        for ckpt in ("b-loc", "b-cl"):
            test = run.test(ckpt)
            assert 0.0 <= test["pxap"] <= 100.0 and 0.0 <= test["accuracy"] <= 100.0
            assert test["n_images"] == 4
            assert set(test["rates"]) >= {"TP*", "FN*", "TN*", "FP*"}
            assert abs(test["rates"]["TP*"] + test["rates"]["FN*"] - 100) < 1e-6
            assert 0 <= run.results["best_epoch"][ckpt] <= cfg.epochs
    assert runs["baseline"].map_method == "layercam"
    assert runs["pixelcam"].map_method == "pixelcam"
    assert runs["pixelcam"].results["baseline_key"] == runs["baseline"].key
    (path,) = runs["baseline"].dir.glob("cams-b-loc-*.pt")  # named by the data it covers
    cams = torch.load(path, weights_only=True)
    assert len(cams) == 8
    # CAMs are stored at feature resolution (48 / 8 = 6) and min-max normalised
    for cam in cams.values():
        assert cam.shape == (6, 6) and float(cam.min()) >= 0.0 and float(cam.max()) <= 1.0
    assert any("stored 8 train CAMs" in line for line in logs)


def test_second_call_reuses_the_runs(trained):
    cfg, runs, _ = trained
    stamp = (runs["pixelcam"].dir / "results.json").stat().st_mtime_ns
    logs: list[str] = []
    again = get_or_train(cfg, log=logs.append)
    assert again["baseline"].reused and again["pixelcam"].reused
    assert (runs["pixelcam"].dir / "results.json").stat().st_mtime_ns == stamp
    assert any("reusing finished run" in line for line in logs)
    # a PixelCAM-only change trains a new PixelCAM model on the same baseline
    other = get_or_train(cfg.replace(lam=0.5), log=logs.append)
    assert other["baseline"].reused and not other["pixelcam"].reused


def test_same_params_same_numbers(trained, tmp_path):
    cfg, runs, _ = trained
    fresh = get_baseline(cfg.replace(cache_dir=str(tmp_path)), log=lambda s: None)
    assert fresh.results["history"] == runs["baseline"].results["history"]
    assert fresh.results["test"] == runs["baseline"].results["test"]


def test_resume_gives_the_same_weights(trained, tmp_path):
    cfg, _, _ = trained
    device = resolve_device("cpu")
    kw = dict(train_ds=dataset(cfg, "train", train=True), valcl_ds=dataset(cfg, "valcl"),
              valpx_ds=dataset(cfg, "valpx"), device=device, log=lambda s: None)
    straight = new_model(cfg, pixel=False)
    fit(straight, cfg, PhaseSpec("baseline", "layercam", 2), out_dir=tmp_path / "a", **kw)
    # stop after one epoch, then rerun the two-epoch phase in the same directory: it resumes
    fit(new_model(cfg, pixel=False), cfg, PhaseSpec("baseline", "layercam", 1),
        out_dir=tmp_path / "b", **kw)
    resumed = new_model(cfg, pixel=False)
    result = fit(resumed, cfg, PhaseSpec("baseline", "layercam", 2), out_dir=tmp_path / "b", **kw)
    assert result.resumed_from == 1
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    hist_a = json.loads((tmp_path / "a" / "history.json").read_text())
    hist_b = json.loads((tmp_path / "b" / "history.json").read_text())
    assert hist_a == hist_b


def test_cam_family_baselines_share_one_training(tmp_path):
    """GradCAM++ and LayerCAM train the same WGAP net: training one in a table that has both also
    writes the other's run, and both runs are the very runs that training each alone gives."""
    table = {**TINY, "epochs": 3, "table_methods": "deepmil,gradcampp,layercam"}
    shared = load_config(None, {**table, "cache_dir": str(tmp_path / "shared")})
    logs: list[str] = []
    layercam = get_baseline(shared, log=logs.append)
    assert any("gradcampp shares this training" in line for line in logs)
    gradcampp = get_baseline(shared.replace(method="gradcampp"), log=logs.append)
    assert gradcampp.reused and gradcampp.results["trained_with"] == layercam.key
    assert gradcampp.map_method == shared.replace(method="gradcampp").map_method
    assert sorted(p.name for p in (layercam.dir / "checkpoints").iterdir()) == ["b-cl.pt",
                                                                                "b-loc.pt"]
    # alone: each in its own cache, with no sibling left to share with
    alone = {m: get_baseline(load_config(None, {**table, "method": m, "table_methods": m,
                                                "cache_dir": str(tmp_path / m)}),
                             log=lambda s: None) for m in ("gradcampp", "layercam")}
    for run, solo in ((gradcampp, alone["gradcampp"]), (layercam, alone["layercam"])):
        assert not solo.reused and "trained_with" not in solo.results
        assert run.key == solo.key
        for field in ("history", "best_epoch", "test", "map_method"):
            assert run.results[field] == solo.results[field], field
        for ckpt in ("b-loc", "b-cl"):
            mine = torch.load(run.dir / "checkpoints" / f"{ckpt}.pt", weights_only=True)
            theirs = torch.load(solo.dir / "checkpoints" / f"{ckpt}.pt", weights_only=True)
            assert all(torch.equal(mine[k], theirs[k]) for k in theirs), ckpt
    # the valpx curves differ by map, so each run keeps its own
    assert ([r["valpx_pxap"] for r in gradcampp.results["history"]]
            != [r["valpx_pxap"] for r in layercam.results["history"]])
    # the report's table of runs names the training it shared, its log holds its own curve
    html = run_table({"LayerCAM": layercam, "GradCAM++": gradcampp}, tmp_path / "nb").data
    assert "shared with LayerCAM" in html and html.count("trained") == 1
    log = (tmp_path / "nb" / "logs" / f"{gradcampp.dir.name}.log").read_text().splitlines()
    assert log[0].startswith(f"[baseline] gradcampp: trained together with {layercam.dir.name}")
    last = gradcampp.results["history"][-1]
    assert log[-1].endswith(f"valpx PxAP {last['valpx_pxap']:.1f}") and len(log) == 5


def test_a_resumed_training_does_not_select_for_a_map_it_did_not_score_from_the_start(
        trained, tmp_path):
    cfg, _, _ = trained
    kw = dict(train_ds=dataset(cfg, "train", train=True), valcl_ds=dataset(cfg, "valcl"),
              valpx_ds=dataset(cfg, "valpx"), device=resolve_device("cpu"), log=lambda s: None)
    fit(new_model(cfg, pixel=False), cfg, PhaseSpec("baseline", "layercam", 1),
        out_dir=tmp_path, **kw)
    result = fit(new_model(cfg, pixel=False), cfg,
                 PhaseSpec("baseline", "layercam", 2, also_select=("gradcampp",)),
                 out_dir=tmp_path, **kw)
    assert result.resumed_from == 1 and set(result.best) == {"b-loc", "b-cl"}
    assert not (tmp_path / "checkpoints" / "b-loc@gradcampp.pt").exists()


def test_state_is_written_on_its_time_cadence_and_after_the_last_epoch(trained, tmp_path,
                                                                      monkeypatch):
    """A fake clock in which every epoch takes 25 s: with state_every_s 60 the state goes to
    disk after the epoch that crosses each minute and after the last one, and the B-LOC/B-CL
    weights on disk always belong to the epochs the state names."""
    import pixelcam.train as train_module

    cfg, _, _ = trained
    device = resolve_device("cpu")
    kw = dict(train_ds=dataset(cfg, "train", train=True), valcl_ds=dataset(cfg, "valcl"),
              valpx_ds=dataset(cfg, "valpx"), device=device, log=lambda s: None)
    now = [0.0]
    monkeypatch.setattr(train_module, "_clock", lambda: now[0])
    real_epoch = train_module._train_epoch

    def slow_epoch(*args, **kwargs):
        now[0] += 25.0
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(train_module, "_train_epoch", slow_epoch)
    writes = []  # (what, state epoch or None)
    real_save = train_module.save_torch

    def spy(obj, path):
        writes.append((path.name, obj["epoch"] if path.name == "state.pt" else None))
        return real_save(obj, path)

    monkeypatch.setattr(train_module, "save_torch", spy)
    monkeypatch.setattr(train_module, "link_over", lambda source, path: spy(None, path))
    def same_checkpoints(run_a, run_b):
        """Whether two runs wrote bitwise equal B-LOC and B-CL weights."""
        for name in ("b-loc", "b-cl"):
            a = torch.load(run_a / "checkpoints" / f"{name}.pt")
            b = torch.load(run_b / "checkpoints" / f"{name}.pt")
            if set(a) != set(b) or not all(torch.equal(a[k], b[k]) for k in a):
                return False
        return True

    every = fit(new_model(cfg, pixel=False), cfg.replace(state_every_s=60.0),
                PhaseSpec("baseline", "layercam", 6), out_dir=tmp_path / "cadence", **kw)
    states = [epoch for name, epoch in writes if name == "state.pt"]
    assert states == [3, 6]  # 75 s after the start, then the last epoch (150 s)
    assert {name for name, _ in writes} == {"state.pt", "b-loc.pt", "b-cl.pt"}
    saved = torch.load(tmp_path / "cadence" / "state.pt", weights_only=False)
    assert saved["best"] == every.best
    best = torch.load(tmp_path / "cadence" / "checkpoints" / "b-loc.pt")
    assert set(best) == set(saved["model"])
    assert [t["epoch"] for t in every.timings] == list(range(7))
    assert set(every.time_split()) == {"data_s", "step_s", "val_s", "state_s"}

    writes.clear()
    per_epoch = fit(new_model(cfg, pixel=False), cfg.replace(state_every_s=0.0),
                    PhaseSpec("baseline", "layercam", 6), out_dir=tmp_path / "every", **kw)
    assert [epoch for name, epoch in writes if name == "state.pt"] == list(range(7))
    assert per_epoch.history == every.history  # the cadence never changes the numbers
    assert same_checkpoints(tmp_path / "cadence", tmp_path / "every")

    # without a resume state (the preflight's runs): the same weights at the same points, no state
    writes.clear()
    stateless = fit(new_model(cfg, pixel=False), cfg.replace(state_every_s=60.0,
                                                             resume_state=False),
                    PhaseSpec("baseline", "layercam", 6), out_dir=tmp_path / "stateless", **kw)
    assert "state.pt" not in {name for name, _ in writes}
    assert not (tmp_path / "stateless" / "state.pt").exists()
    assert stateless.history == every.history and stateless.best == every.best
    assert same_checkpoints(tmp_path / "cadence", tmp_path / "stateless")


def test_best_weights_of_one_epoch_are_one_file(tmp_path):
    from pixelcam.train import _save_best

    first, second = {"w": torch.ones(2)}, {"w": torch.zeros(2)}
    _save_best({"b-loc": first, "b-cl": first}, tmp_path)
    assert (tmp_path / "b-loc.pt").samefile(tmp_path / "b-cl.pt")
    _save_best({"b-loc": second}, tmp_path)  # B-LOC moves on: B-CL keeps the old weights
    assert torch.equal(torch.load(tmp_path / "b-loc.pt")["w"], torch.zeros(2))
    assert torch.equal(torch.load(tmp_path / "b-cl.pt")["w"], torch.ones(2))
    _save_best({"b-loc": first, "b-cl": second}, tmp_path)
    assert not (tmp_path / "b-loc.pt").samefile(tmp_path / "b-cl.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b-cl.pt", "b-loc.pt"]


def test_image_cache_never_changes_the_numbers(trained, tmp_path):
    cfg, _, _ = trained
    device = resolve_device("cpu")
    out = {}
    for mb in (0, 64):
        c = cfg.replace(image_cache_mb=mb)
        train_ds = dataset(c, "train", train=True)
        result = fit(new_model(c, pixel=False), c, PhaseSpec("baseline", "layercam", 2),
                     train_ds=train_ds, valcl_ds=dataset(c, "valcl"),
                     valpx_ds=dataset(c, "valpx"), out_dir=tmp_path / str(mb), device=device,
                     log=lambda s: None)
        assert train_ds.preloaded == (mb > 0)
        out[mb] = result.history
    assert out[0] == out[64]


@pytest.mark.parametrize("method,variant,map_name", [
    ("gradcampp", "official", "gradcampp_official"), ("gradcampp", "paper", "gradcampp"),
    ("deepmil", "official", "deepmil"), ("cam", "official", "cam"), ("sat", "official", "sat")])
def test_every_baseline_trains_with_pixelcam(method, variant, map_name, tmp_path):
    size = {"image_size": 224, "resize_size": 256} if method == "sat" else {}
    cfg = load_config(None, {**TINY, **size, "epochs": 1, "method": method,
                             "gradcampp_variant": variant, "cache_dir": str(tmp_path)})
    runs = get_or_train(cfg, log=lambda s: None)
    assert runs["baseline"].map_method == map_name
    if method == "sat":  # the baseline trains with SAT's two extra losses, PixelCAM without
        assert {"loss_area", "loss_norm"} <= set(runs["baseline"].results["history"][1])
        assert "loss_area" not in runs["pixelcam"].results["history"][1]
    for run in runs.values():
        test = run.test("b-loc")
        assert 0.0 <= test["pxap"] <= 100.0 and test["n_images"] == 4


def test_unet_and_negev_train_and_evaluate(trained):
    cfg, runs, _ = trained
    unet = get_unet(cfg, log=lambda s: None)
    test = unet.test("b-loc")
    assert 0.0 <= test["pxap"] <= 100.0 and math.isnan(test["accuracy"])  # CL is n/a
    negev = get_negev(cfg, log=lambda s: None)
    assert negev.results["baseline_key"] == runs["baseline"].key
    # the classifier is frozen: NEGEV's accuracy is its baseline's at the init checkpoint
    assert negev.results["history"][0]["valcl_accuracy"] == negev.results["history"][-1][
        "valcl_accuracy"]
    assert 0.0 <= negev.test("b-loc")["pxap"] <= 100.0
    table = main_table([runs["baseline"], runs["pixelcam"], negev, unet], cfg)
    assert list(table.index) == ["LayerCAM", "LayerCAM + PixelCAM", "LayerCAM + NEGEV", "U-Net"]
    assert table.loc["U-Net", "PxAP paper"] == 95.8 and math.isnan(table.loc["U-Net", "CL run"])


@pytest.mark.parametrize("backbone,pretrained,size", [
    ("vgg16", "false", 48), ("inception_v3", "false", 64), ("efficientnet_lite0", "package", 48)])
def test_other_backbones_train(backbone, pretrained, size, tmp_path):
    cfg = load_config(None, {**TINY, "epochs": 1, "backbone": backbone, "pretrained": pretrained,
                             "image_size": size, "resize_size": size + 8,
                             "cache_dir": str(tmp_path)})
    runs = get_or_train(cfg, log=lambda s: None)
    for run in runs.values():
        assert 0.0 <= run.test("b-loc")["pxap"] <= 100.0


def test_verify_finds_a_tampered_number(trained, tmp_path):
    import time

    from pixelcam.report import rates_table, write_results
    from pixelcam.verify import verify

    cfg, runs, _ = trained
    order = [runs["baseline"], runs["pixelcam"]]
    metrics = {"table1": main_table(order, cfg).reset_index().to_dict(orient="records"),
               "table6": rates_table(order, cfg).reset_index().to_dict(orient="records")}
    path = write_results(tmp_path / "01_x", cfg, time.time(), metrics=metrics, headline={},
                         runs={"a": order[0], "b": order[1]})
    problems, checked = verify(tmp_path)
    assert problems == [] and checked == 2 * 7 + 6 * 6
    payload = json.loads(path.read_text())
    payload["metrics"]["table1"][1]["PxAP run"] += 0.1
    path.write_text(json.dumps(payload))
    problems, _ = verify(tmp_path)
    assert len(problems) == 1 and "LayerCAM + PixelCAM" in problems[0] and "PxAP run" in problems[0]


@pytest.mark.parametrize("kind", ["baseline", "pixelcam", "negev"])
def test_a_checkpoint_loads_without_init_into_the_same_model(trained, kind):
    """model_holding skips the random init the weights replace; the model is the same."""
    from pixelcam.builders import model_for, model_holding

    cfg, runs, _ = trained
    run = runs.get(kind) or get_negev(cfg, log=lambda s: None)
    state = torch.load(run.dir / "checkpoints" / "b-loc.pt", weights_only=True)
    ordinary = model_for(kind, cfg)
    ordinary.load_state_dict(state)
    held = model_holding(kind, cfg, state)
    assert not any(t.is_meta for t in [*held.parameters(), *held.buffers()])
    # it holds the checkpoint's own tensors (nothing was initialised, then overwritten)
    assert all(t.data_ptr() == state[k].data_ptr() for k, t in held.state_dict().items())
    assert [(n, p.requires_grad) for n, p in held.named_parameters()] == [
        (n, p.requires_grad) for n, p in ordinary.named_parameters()]  # NEGEV's frozen part too
    x = torch.rand(2, 3, cfg.image_size, cfg.image_size)
    with torch.no_grad():
        a, b = ordinary.eval()(x), held.eval()(x)
    outputs = [(u, v) for u, v in zip(a, b, strict=True) if u is not None or v is not None]
    assert outputs and all(torch.equal(u, v) for u, v in outputs)


def test_a_module_with_a_buffer_outside_its_state_dict_is_built_the_ordinary_way(
        trained, monkeypatch):
    """A non-persistent buffer is not in the checkpoint: a meta build would leave it empty."""
    import pixelcam.builders as runs_module

    cfg, runs, _ = trained
    real_model_for = runs_module.model_for

    def with_buffer(kind, c):
        model = real_model_for(kind, c)
        model.register_buffer("scale", torch.full((1,), 3.0), persistent=False)
        return model

    monkeypatch.setattr(runs_module, "model_for", with_buffer)
    state = torch.load(runs["baseline"].dir / "checkpoints" / "b-loc.pt", weights_only=True)
    model = runs_module.model_holding("baseline", cfg, state)
    assert float(model.scale) == 3.0
    assert all(torch.equal(t, state[k]) for k, t in model.state_dict().items())
    with pytest.raises(RuntimeError, match="Missing key"):  # a mismatch is still named
        runs_module.model_holding("baseline", cfg, {k: v for k, v in state.items()
                                                    if not k.endswith("running_mean")})


def test_checkpoints_of_one_epoch_are_evaluated_once(trained, monkeypatch, tmp_path):
    """B-LOC and B-CL of the same epoch are one file: one test evaluation, copied."""
    import pixelcam.pipelines as runs_module

    cfg, runs, _ = trained
    run = runs["baseline"]
    ckpts = run.dir / "checkpoints"
    calls = []
    real = runs_module.evaluate_split

    def counting(*args, **kwargs):
        calls.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(runs_module, "evaluate_split", counting)
    device = resolve_device("cpu")
    apart = runs_module._evaluate_checkpoints(run.dir, cfg, "baseline", run.map_method, device)
    assert len(calls) == 2 * (1 if (ckpts / "b-loc.pt").samefile(ckpts / "b-cl.pt") else 2)
    for name in ("b-loc", "b-cl"):
        assert apart[name]["pxap"] == run.test(name)["pxap"]
    # make the two one file, as train._save_best does for one epoch: one evaluation
    one_file = tmp_path / "checkpoints"
    one_file.mkdir()
    (one_file / "b-loc.pt").write_bytes((ckpts / "b-loc.pt").read_bytes())
    (one_file / "b-cl.pt").hardlink_to(one_file / "b-loc.pt")
    calls.clear()
    once = runs_module._evaluate_checkpoints(tmp_path, cfg, "baseline", run.map_method, device)
    assert len(calls) == 2  # valpx and test, for one checkpoint
    assert once["b-cl"] == once["b-loc"] == apart["b-loc"]
    assert once["b-cl"] is not once["b-loc"]  # copies: editing one never changes the other


def test_test_rates_use_the_valpx_threshold_measured_at_the_selected_epoch(trained, monkeypatch):
    """Validation keeps each epoch's valpx threshold, so the test evaluation of a checkpoint
    needs no second valpx pass; the numbers are those of that second pass."""
    import pixelcam.pipelines as runs_module

    cfg, runs, _ = trained
    device = resolve_device("cpu")
    for kind in ("baseline", "pixelcam"):
        run = runs[kind]
        rows = {r["epoch"]: r for r in run.results["history"]}
        for name in ("b-loc", "b-cl"):
            chosen = rows[run.results["best_epoch"][name]]
            assert run.test(name)["valpx_threshold"] == chosen["valpx_threshold"]
        run_cfg = run.config
        again = runs_module._evaluate_checkpoints(run.dir, run_cfg, kind, run.map_method, device)
        assert again == run.results["test"], kind  # a valpx pass per checkpoint: same entries
    calls = []
    real = runs_module.evaluate_split

    def counting(*args, **kwargs):
        calls.append(args[1].dataset.split)
        return real(*args, **kwargs)

    monkeypatch.setattr(runs_module, "evaluate_split", counting)
    run = runs["baseline"]
    best = run.results["best_epoch"]
    thresholds = runs_module._selected_thresholds(run.results["history"], best)
    runs_module._evaluate_checkpoints(run.dir, cfg, "baseline", run.map_method, device,
                                      thresholds)
    assert set(calls) == {"test"}  # no valpx pass
    # a history without thresholds (a run resumed from an older state) gets the valpx pass
    old = [{k: v for k, v in r.items() if k != "valpx_threshold"}
           for r in run.results["history"]]
    assert runs_module._selected_thresholds(old, best) == {}


@pytest.mark.parametrize("kind,method", [("baseline", "layercam"), ("baseline", "deepmil"),
                                         ("baseline", "sat"), ("pixelcam", "layercam"),
                                         ("negev", "layercam")])
def test_valcl_accuracy_counts_valpx_images_from_their_map_pass(kind, method, tmp_path):
    """valpx lies inside valcl: validation scores valpx's images once, with their maps, and
    the rest of valcl without; the scores and torch's RNG stream are the two-pass ones."""
    from pixelcam.builders import model_for
    from pixelcam.evaluate import eval_loader
    from pixelcam.train import _valcl_outside_valpx, _validate

    sat = {"image_size": 224, "resize_size": 256} if method == "sat" else {}  # DeiT-Tiny/16
    cfg = load_config(None, {**TINY, **sat, "method": method, "cache_dir": str(tmp_path)})
    torch.manual_seed(3)
    model = model_for(kind, cfg)
    valcl_ds, valpx_ds = dataset(cfg, "valcl"), dataset(cfg, "valpx")
    rest = _valcl_outside_valpx(valcl_ds, valpx_ds)
    outside = {valcl_ds.records[i].image_id for i in rest.indices}
    assert outside == ({r.image_id for r in valcl_ds.records}
                       - {r.image_id for r in valpx_ds.records}) and len(outside) == 2
    map_method = {"baseline": cfg.map_method, "pixelcam": "pixelcam", "negev": "negev"}[kind]
    phase = PhaseSpec(kind, map_method, 1)
    device = resolve_device("cpu")
    valcl, valpx, rest_loader = (eval_loader(d, 3) for d in (valcl_ds, valpx_ds, rest))
    torch.manual_seed(5)
    two_passes = _validate(model, valcl, valpx, phase, device)
    after = torch.get_rng_state()
    torch.manual_seed(5)
    merged = _validate(model, valcl, valpx, phase, device, rest_loader)
    assert merged == two_passes and 0 <= merged["valcl_accuracy"] <= 100
    assert torch.equal(torch.get_rng_state(), after)
    # valcl = valpx (the preflight's one image per class): an empty pass keeps the RNG stream
    nothing = _valcl_outside_valpx(valpx_ds, valpx_ds)
    assert len(nothing) == 0
    torch.manual_seed(5)
    two_passes = _validate(model, valpx, valpx, phase, device)
    after = torch.get_rng_state()
    torch.manual_seed(5)
    assert _validate(model, valpx, valpx, phase, device, eval_loader(nothing, 3)) == two_passes
    assert torch.equal(torch.get_rng_state(), after)
    # valpx images that valcl lacks, or datasets without records: the plain valcl pass
    assert _valcl_outside_valpx(valpx_ds, dataset(cfg, "test")) is None
    assert _valcl_outside_valpx(rest, valpx_ds) is None


def test_negev_gives_the_same_numbers_whatever_the_process_drew_before(tmp_path):
    """NEGEV's decoder init is seeded: its run is the same whether its baseline was trained
    just before in the same process or read from the cache after other random draws."""
    first = load_config(None, {**TINY, "cache_dir": str(tmp_path / "a")})
    fresh = get_negev(first, log=lambda s: None)  # trains its baseline first, in-process
    second = first.replace(cache_dir=str(tmp_path / "b"))
    get_baseline(second, log=lambda s: None)
    torch.rand(1000)  # whatever else the process did meanwhile
    later = get_negev(second, log=lambda s: None)
    assert later.key == fresh.key
    for field in ("history", "best_epoch", "test"):
        assert later.results[field] == fresh.results[field], field
