"""Hostile and awkward user files: HDF5 that reads other files, names that would leave `--out`, complex
arrays, one-snapshot data, inverted coefficient ranges, format overrides and unnamed channels."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from data_pipelines.formats import FormatError, detect_format, read_any
from data_pipelines.paths import inside, local_or_hub, looks_like_hub_id
from eval_suite.command_line import main
from eval_suite.studies.zero_shot import ZeroShotConfig, generate_family_set
from finetune.data import load_trajectories

RNG = np.random.default_rng(1)
SHAPE = (2, 3, 1, 8, 8)


def _pdefm(*args):
    """Runs `pdefm ARGS`; returns (exit code, stdout, stderr)."""
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def _one_line_error(code, stderr, *needles):
    assert code == 2, stderr
    assert len(stderr.splitlines()) == 1 and stderr.startswith("error: "), stderr
    assert "Traceback" not in stderr
    for needle in needles:
        assert needle in stderr, stderr


@pytest.fixture
def secret(tmp_path):
    """A local file outside the data that a hostile HDF5 file points at."""
    data = RNG.normal(size=SHAPE).astype(np.float32)
    with h5py.File(tmp_path / "secret.h5", "w") as f:
        f["data"] = data
    (tmp_path / "secret.raw").write_bytes(data.tobytes())
    return tmp_path


def test_hdf5_external_link_refused(secret, tmp_path):
    with h5py.File(tmp_path / "link.h5", "w") as f:
        f["data"] = h5py.ExternalLink(str(secret / "secret.h5"), "/data")
    with pytest.raises(
        FormatError, match=r"link.h5: 'data' is an external link to .*secret.h5:/data; refused"
    ):
        read_any(tmp_path / "link.h5", format="poseidon", fields=["s"])
    code, _, err = _pdefm("data", "convert", tmp_path / "link.h5", "--out", tmp_path / "c", "--fields", "s")
    _one_line_error(code, err, "external link")
    assert not (tmp_path / "c").exists()


def test_hdf5_external_storage_refused(secret, tmp_path):
    raw = secret / "secret.raw"
    with h5py.File(tmp_path / "ext.h5", "w") as f:
        f.create_dataset("data", shape=SHAPE, dtype="f4", external=[(str(raw), 0, raw.stat().st_size)])
    with pytest.raises(FormatError, match=r"ext.h5: dataset 'data' has its data in external file\(s\)"):
        read_any(tmp_path / "ext.h5", fields=["s"])
    with pytest.raises(FormatError, match="external file"):
        detect_format(tmp_path / "ext.h5")


def test_hdf5_virtual_dataset_refused(secret, tmp_path):
    layout = h5py.VirtualLayout(shape=SHAPE, dtype="f4")
    layout[:] = h5py.VirtualSource(str(secret / "secret.h5"), "data", shape=SHAPE)
    with h5py.File(tmp_path / "vds.h5", "w") as f:
        f.create_virtual_dataset("group/data", layout)
    with pytest.raises(FormatError, match=r"dataset 'group/data' is a virtual dataset mapping .*secret.h5"):
        read_any(tmp_path / "vds.h5", format="poseidon", variable="group/data", fields=["s"])


def test_convert_refuses_names_that_leave_out(tmp_path):
    np.savez(tmp_path / "heat.npz", u=RNG.normal(size=SHAPE).astype(np.float32), fields=np.array(["s"]))
    out = tmp_path / "a" / "b" / "corpus"
    code, _, err = _pdefm("data", "convert", tmp_path / "heat.npz", "--out", out, "--pde", "../../other")
    _one_line_error(code, err, "--pde '../../other' cannot be used as a folder name")
    assert not list(tmp_path.rglob("*.parquet"))
    # a name from inside a file (The Well's dataset_name attribute) is checked too
    with h5py.File(tmp_path / "w.hdf5", "w") as f:
        f.attrs["dataset_name"] = "../../escape"
        f["t0_fields/density"] = RNG.normal(size=(1, 3, 8, 8)).astype(np.float32)
    with pytest.raises(
        FormatError, match=r"family id \(pde\) '../../escape' cannot be used as a folder name"
    ):
        read_any(tmp_path / "w.hdf5")
    with pytest.raises(ValueError, match="would be written outside"):
        inside(out, "data", "..", "..", "x")


def test_complex_arrays_refused_or_split_on_request(tmp_path):
    u = (RNG.normal(size=SHAPE) + 1j * RNG.normal(size=SHAPE)).astype(np.complex64)
    np.save(tmp_path / "psi.npy", u)
    with pytest.raises(FormatError, match=r"field 'u' is complex \(complex64\); refused"):
        read_any(tmp_path / "psi.npy", fields=["s"])
    trajs = read_any(tmp_path / "psi.npy", split_complex=True)
    assert trajs[1].fields == ["re", "im"]
    np.testing.assert_array_equal(trajs[1].u[:, 1], u[1, :, 0].imag)
    code, _, err = _pdefm("data", "convert", tmp_path / "psi.npy", "--out", tmp_path / "c", "--fields", "s")
    _one_line_error(code, err, "complex")
    code, out, err = _pdefm(
        "data", "convert", tmp_path / "psi.npy", "--out", tmp_path / "c", "--split-complex"
    )
    assert code == 0, err
    assert "2 trajectories written" in out


def test_one_snapshot_data_refused_for_finetuning(tmp_path):
    np.save(tmp_path / "still.npy", RNG.normal(size=(4, 1, 1, 8, 8)).astype(np.float32))
    with pytest.raises(ValueError, match=r"1 snapshot\(s\), need at least 2"):
        load_trajectories(tmp_path / "still.npy", fields=["s"])
    args = ["--model", tmp_path / "no-model", "--data", tmp_path / "still.npy", "--fields", "s"]
    code, _, err = _pdefm("finetune", *args, "--shots", "1", "--out", tmp_path / "ft")
    _one_line_error(code, err, "T = 1")


def test_inverted_coefficient_range_refused(tmp_path):
    with pytest.raises(ValueError, match=r"range of 'nu' is inverted \(lo 0.5 > hi 0.1\)"):
        generate_family_set("burgers:nu=0.5:0.1", ZeroShotConfig(trajectories=1, resolution=16, snapshots=2))
    code, _, err = _pdefm(
        "eval",
        "zero-shot",
        "--model",
        tmp_path / "m",
        "--out",
        tmp_path / "r",
        "--family",
        "burgers:nu=0.5:0.1",
    )
    _one_line_error(code, err, "inverted")


def test_poseidon_velocity_file_is_not_pdebench(tmp_path):
    data = RNG.normal(size=(2, 3, 2, 8, 8)).astype(np.float32)
    with h5py.File(tmp_path / "NS-PwC.nc", "w") as f:
        f["velocity"] = data
    assert detect_format(tmp_path / "NS-PwC.nc") == "poseidon"
    trajs = read_any(tmp_path / "NS-PwC.nc")
    assert trajs[0].fields == ["u", "v"] and trajs[0].pde == "NS-PwC"
    np.testing.assert_array_equal(trajs[1].u, data[1])
    assert read_any(tmp_path / "NS-PwC.nc", format="poseidon")[0].fields == ["u", "v"]
    with pytest.raises(FormatError, match="no PDEBench 2D layout"):
        read_any(tmp_path / "NS-PwC.nc", format="pdebench")
    # PDEBench's own velocity [B, T, X, Y, 2] is still PDEBench
    with h5py.File(tmp_path / "ns_incom.h5", "w") as f:
        f["velocity"] = RNG.normal(size=(2, 3, 8, 8, 2)).astype(np.float32)
    assert detect_format(tmp_path / "ns_incom.h5") == "pdebench"


def test_format_option_overrides_detection(tmp_path):
    data = RNG.normal(size=(2, 3, 4, 8, 8)).astype(np.float32)
    with h5py.File(tmp_path / "mixed.h5", "w") as f:
        f["density"] = data[:, :, 0]  # looks like PDEBench's per-field layout
        f["solution"] = data
    assert detect_format(tmp_path / "mixed.h5") == "pdebench"
    assert read_any(tmp_path / "mixed.h5", format="poseidon")[0].fields == ["rho", "u", "v", "p"]
    trajs = load_trajectories(tmp_path / "mixed.h5", format="poseidon", fields=["u", "v"])
    np.testing.assert_array_equal(trajs[0].u, data[0, :, 1:3])
    with open(tmp_path / "arrays.bin", "wb") as fh:  # numpy content, an extension nobody detects
        np.save(fh, data[:, :, :1])
    with pytest.raises(FormatError, match="unsupported extension"):
        read_any(tmp_path / "arrays.bin", fields=["s"])
    assert len(read_any(tmp_path / "arrays.bin", format="numpy", fields=["s"])) == 2
    out = tmp_path / "c"
    args = ["data", "convert", tmp_path / "mixed.h5", "--out", out, "--format", "poseidon", "--pde", "flow"]
    code, stdout, err = _pdefm(*args)
    assert code == 0, err
    assert "2 trajectories written" in stdout and (out / "data" / "flow").is_dir()
    code, _, err = _pdefm("data", "convert", tmp_path / "mixed.h5", "--out", out, "--format", "hdf9")
    _one_line_error(code, err, "unknown format 'hdf9'; choose from numpy, well, pdebench, poseidon")


def test_fields_name_unnamed_channels(tmp_path):
    data = RNG.normal(size=(4, 3, 1, 8, 8)).astype(np.float32)
    with h5py.File(tmp_path / "heat.h5", "w") as f:
        f["data"] = data  # a 1-channel Poseidon-layout file: no default names
    with pytest.raises(FormatError, match=r"no field names for the 1 channel\(s\) of 'data'"):
        load_trajectories(tmp_path / "heat.h5")
    trajs = load_trajectories(tmp_path / "heat.h5", fields=["s"])
    assert trajs[3].fields == ["s"]
    np.testing.assert_array_equal(trajs[3].u, data[3])
    np.save(tmp_path / "heat.npy", data)
    assert load_trajectories(tmp_path / "heat.npy", fields=["u"])[0].fields == ["u"]
    with pytest.raises(ValueError, match=r"give 1 names, got \['u', 'v'\]"):
        load_trajectories(tmp_path / "heat.npy", fields=["u", "v"])
    # through the CLI the data now loads; what fails is the (missing) checkpoint, named as a missing path
    args = ["--model", tmp_path / "no-model", "--data", tmp_path / "heat.h5", "--fields", "s", "--shots", "1"]
    code, _, err = _pdefm("finetune", *args, "--out", tmp_path / "ft")
    _one_line_error(code, err, "checkpoint", "no-model", "no such file or folder")


def test_missing_paths_are_not_hub_ids(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    for missing in ["./x", str(tmp_path / "abs"), "x.h5", "a/b/c", "data/x.h5", "runs/model", "~/nope-pdefm"]:
        assert not looks_like_hub_id(missing), missing
        with pytest.raises(FileNotFoundError, match="no such file or folder"):
            local_or_hub(missing, "data")
    assert looks_like_hub_id("camlab-ethz/Poseidon-T") and looks_like_hub_id("my-lab/ns.v2")
    assert local_or_hub("camlab-ethz/Poseidon-T", "checkpoint") == "camlab-ethz/Poseidon-T"
    with pytest.raises(FileNotFoundError, match=r"data 'data/x.h5' does not exist: no such file or folder"):
        load_trajectories("data/x.h5")
    from foundation.loading import load_model

    with pytest.raises(FileNotFoundError, match=r"checkpoint './ckpt' does not exist"):
        load_model("./ckpt")
