"""The cluster probe (``scripts/cluster_probe.py``) builds for Hopper without spills, and its shared-memory plan
fits one block of every cluster size it runs: its GPU measurements are in ``results/gpu-dev/10-cluster-probe``."""

import importlib.util
import re
import shutil
from pathlib import Path

import pytest
from test_gpu_planning import kernel_parameters

from mlpbench import gpu

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("cluster_probe", ROOT / "scripts" / "cluster_probe.py")
probe = importlib.util.module_from_spec(spec)
spec.loader.exec_module(probe)

H200_SHARED_OPTIN = 232448  # bytes a block may opt in to (cudaDevAttrMaxSharedMemoryPerBlockOptin)


@pytest.mark.parametrize("batch", probe.BATCHES)
@pytest.mark.parametrize("variant", [None, *probe.VARIANTS])
@pytest.mark.parametrize("cluster", [2, 4, 8, 16])
def test_the_plan_fits_and_covers_the_layer(cluster, variant, batch):
    if variant is not None and variant not in probe.variants(batch):
        pytest.skip(f"mapping {probe.VARIANTS[variant]} needs more than {batch} rows")
    plan = probe.layout(cluster, H200_SHARED_OPTIN, variant, batch)
    assert plan["rows"] % 4 == 0  # 16-byte accesses along a slice
    assert plan["rows"] * cluster >= probe.WIDTH
    if variant is None or plan["layers_held"] > 0:  # what is launched fits
        assert plan["shared_bytes"] <= H200_SHARED_OPTIN
    assert plan["shared_bytes"] % 16 == 0
    # from 8 blocks on a cluster holds at least one layer's weight slice beside every product mapping's sums;
    # 2 blocks never do beside the whole batch, and do beside 4 of its rows
    if cluster >= 8:
        assert plan["layers_held"] >= 1
    if cluster == 2 and batch in (4, 32):
        assert plan["layers_held"] == (0 if batch == 32 else 1)


def test_the_launch_arguments_match_the_kernel_signature():
    signature = re.search(r"cluster_probe\(([^)]*)\)", probe.SOURCE.read_text()).group(1)
    assert list(probe.ProbeArgs._fields_) == kernel_parameters(signature)


def test_each_batch_share_runs_only_the_mappings_it_fills():
    assert probe.variants(32) == list(probe.VARIANTS)
    assert [probe.VARIANTS[v] for v in probe.variants(4)] == [(4, 1), "rows", "rows8", "outputs", "outputs-u20"]
    assert [probe.VARIANTS[v] for v in probe.variants(8)] == [(4, 1), (8, 2), "rows", "rows8", "outputs", "outputs-u20"]
    for unsplit in (4, 5, 6, 7):  # lanes per row sum by shuffles, one output per thread sums alone
        assert probe.partial_rows(20, unsplit, 4) == 0
    with pytest.raises(ValueError, match="rows of the batch"):
        probe.spec(6)
    assert [probe.tile_name(v) for v in probe.variants(4)] == ["4x1", "rows", "rows8", "outputs", "outputs-u20"]
    assert probe.tile_name(None) == ""


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc (CUDA toolkit) not on PATH")
@pytest.mark.parametrize("batch", [4, 32])
def test_the_probe_compiles_for_sm90_without_spills(batch):
    (row,) = gpu.compile_report(probe.spec(batch), "sm_90", shutil.which("nvcc"))
    assert row["kernel"] == "cluster_probe"
    assert row["spill_store_bytes"] == row["spill_load_bytes"] == row["stack_bytes"] == 0, row


def test_a_mapping_that_does_not_fit_the_batch_is_refused(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr("sys.argv", ["cluster_probe.py", "--out", str(tmp_path), "--batch", "4", "--tiles", "lanes"])
    with pytest.raises(SystemExit):
        probe.main()
    assert "do not run at batch 4" in capsys.readouterr().err
