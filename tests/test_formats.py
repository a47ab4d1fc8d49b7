"""User file readers on small spec-conformant files written here, `pdefm data convert`, bad input."""

from __future__ import annotations

import h5netcdf
import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from data_pipelines.cli import app
from data_pipelines.corpus import load_trajectories, write_corpus
from data_pipelines.formats import FormatError, detect_format, read_any

RNG = np.random.default_rng(0)


def _poseidon_nc(path, n=3, t=4, c=4, variable="data"):
    data = RNG.normal(size=(n, t, c, 8, 8))
    with h5netcdf.File(path, "w") as f:
        f.dimensions = {"member": n, "time": t, "channel": c, "x": 8, "y": 8}
        f.create_variable(variable, ("member", "time", "channel", "x", "y"), "f4")[...] = data
    return data.astype(np.float32)


def test_poseidon_netcdf_detected_and_read(tmp_path):
    data = _poseidon_nc(tmp_path / "CE-RP.nc", c=5)
    assert detect_format(tmp_path / "CE-RP.nc") == "poseidon"
    trajs = read_any(tmp_path / "CE-RP.nc")
    assert len(trajs) == 3 and trajs[0].fields == ["rho", "u", "v", "p", "E"] and trajs[0].pde == "CE-RP"
    np.testing.assert_array_equal(trajs[2].u, data[2])
    np.testing.assert_allclose(trajs[0].t, np.linspace(0, 1, 4))
    with h5py.File(tmp_path / "two.h5", "w") as f:
        f["a"] = data[:, :, :2]
        f["b"] = data[:, :, :2]
    with pytest.raises(FormatError, match=r"cannot detect the data variable.*\['a', 'b'\]"):
        read_any(tmp_path / "two.h5", format="poseidon")
    trajs = read_any(tmp_path / "two.h5", format="poseidon", variable="b")
    assert trajs[0].fields == ["u", "v"]
    with h5py.File(tmp_path / "rank4.h5", "w") as f:
        f["velocity"] = data[0]
    with pytest.raises(
        FormatError, match=r"field 'velocity' must have rank 5 \[N, T, C, H, W\], got shape \(4, 5, 8, 8\)"
    ):
        read_any(tmp_path / "rank4.h5", format="poseidon", variable="velocity")


def test_pdebench_per_field_layout_transposes_x_y(tmp_path):
    path = tmp_path / "2D_CFD_Rand_M0.1.hdf5"
    fields = {
        k: RNG.normal(size=(2, 3, 8, 6)).astype(np.float32) for k in ("density", "Vx", "Vy", "pressure")
    }
    with h5py.File(path, "w") as f:
        for k, v in fields.items():
            f[k] = v
        f["t-coordinate"] = np.linspace(0, 1, 4)  # PDEBench stores T + 1 stamps
        f["x-coordinate"] = (np.arange(8) + 0.5) / 8
        f["y-coordinate"] = (np.arange(6) + 0.5) / 6
    assert detect_format(path) == "pdebench"
    trajs = read_any(path)
    assert trajs[0].fields == ["rho", "u", "v", "p"] and trajs[0].u.shape == (3, 4, 6, 8)
    np.testing.assert_array_equal(trajs[1].u[2, 1], fields["Vx"][1, 2].T)  # u[..., y, x] = Vx[..., x, y]
    np.testing.assert_allclose(trajs[0].t, [0, 1 / 3, 2 / 3])
    assert trajs[0].domain == pytest.approx((0, 1, 0, 1))


def test_pdebench_seed_groups(tmp_path):
    path = tmp_path / "2D_diff-react_NA_NA.h5"
    data = RNG.normal(size=(2, 5, 8, 8, 2)).astype(np.float32)
    with h5py.File(path, "w") as f:
        for s in range(2):
            g = f.create_group(f"{s:04d}")
            g["data"] = data[s]
            g["grid/t"] = np.linspace(0, 5, 5)
            g["grid/x"] = np.linspace(-1, 1, 8)
            g["grid/y"] = np.linspace(-1, 1, 8)
    trajs = read_any(path)
    assert [t.fields for t in trajs] == [["a", "b"]] * 2
    np.testing.assert_array_equal(trajs[1].u[3, 1], data[1, 3, :, :, 1].T)
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["0000/data"] = data[0, ..., :1]
    with pytest.raises(FormatError, match=r"cannot name the 1 channel\(s\) of '0000/data'"):
        read_any(tmp_path / "other.h5")
    assert read_any(tmp_path / "other.h5", fields=["s"])[0].fields == ["s"]


def _well(path, names=("density",)):
    with h5py.File(path, "w") as f:
        f.attrs["dataset_name"] = "shear_flow"
        f.attrs["n_spatial_dims"] = 2
        f["dimensions/time"] = np.linspace(0, 2, 4)
        f["dimensions/x"] = (np.arange(8) + 0.5) / 8 * 2
        f["dimensions/y"] = (np.arange(6) + 0.5) / 6
        f["dimensions/time"].attrs["sample_varying"] = False
        for name in names:
            d = f.create_dataset(f"t0_fields/{name}", data=RNG.normal(size=(2, 4, 8, 6)).astype(np.float32))
            d.attrs["time_varying"] = True
        f.create_dataset("t0_fields/mask", data=np.ones((8, 6))).attrs["time_varying"] = False
        f.create_dataset("t1_fields/velocity", data=RNG.normal(size=(2, 4, 8, 6, 2)).astype(np.float32))
        f.create_group("boundary_conditions/x_bc").attrs["bc_type"] = "PERIODIC"
        f["scalars/Reynolds"] = 1e4
        return {k: f[k][()] for k in ("t0_fields/" + names[0], "t1_fields/velocity")}


def test_the_well_t0_t1_fields(tmp_path):
    arrays = _well(tmp_path / "shear_flow.hdf5")
    assert detect_format(tmp_path / "shear_flow.hdf5") == "well"
    trajs = read_any(tmp_path / "shear_flow.hdf5")
    t = trajs[1]
    assert t.fields == ["rho", "u", "v"] and t.pde == "shear_flow" and t.bc == "periodic"
    np.testing.assert_array_equal(t.u[2, 2], arrays["t1_fields/velocity"][1, 2, :, :, 1].T)
    np.testing.assert_array_equal(t.u[0, 0], arrays["t0_fields/density"][1, 0].T)
    assert t.domain == pytest.approx((0, 2, 0, 1)) and t.params == {"Reynolds": 1e4}
    np.testing.assert_allclose(t.t, np.linspace(0, 2, 4))
    _well(tmp_path / "buoy.hdf5", names=("tracer_concentration",))
    with pytest.raises(FormatError, match=r"unknown field name 'tracer_concentration' in 't0_fields'"):
        read_any(tmp_path / "buoy.hdf5")
    assert (
        read_any(tmp_path / "buoy.hdf5", field_map={"tracer_concentration": "tracer"})[0].fields[0]
        == "tracer"
    )


def test_numpy_files_and_bad_input(tmp_path):
    u = RNG.normal(size=(2, 3, 1, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "d.npz", u=u, t=np.array([0, 0.5, 1.0]), fields=np.array(["s"]))
    trajs = read_any(tmp_path / "d.npz", pde="heat")
    assert trajs[0].pde == "heat" and trajs[0].fields == ["s"] and trajs[1].t[1] == 0.5
    np.save(tmp_path / "one.npy", u[0])
    assert len(read_any(tmp_path / "one.npy", fields=["s"])) == 1
    with pytest.raises(FormatError, match=r"no field names for its 1 channel\(s\)"):
        read_any(tmp_path / "one.npy")
    np.save(tmp_path / "r3.npy", u[0, 0])
    with pytest.raises(
        FormatError, match=r"field 'u' must be \[N, T, C, H, W\] or \[T, C, H, W\], got \(1, 8, 8\)"
    ):
        read_any(tmp_path / "r3.npy", fields=["s"])
    with pytest.raises(ValueError, match=r"unknown field name\(s\) \['zz'\]"):
        read_any(tmp_path / "one.npy", fields=["zz"])
    np.save(tmp_path / "two.npy", np.zeros((3, 2, 4, 4)))
    with pytest.raises(FormatError, match=r"1 field names \['s'\] for C = 2 channels"):
        read_any(tmp_path / "two.npy", fields=["s"])
    np.save(tmp_path / "none.npy", np.zeros((0, 3, 1, 4, 4)))
    with pytest.raises(FormatError, match="empty selection"):
        read_any(tmp_path / "none.npy", fields=["s"])
    _poseidon_nc(tmp_path / "cut.nc")
    (tmp_path / "cut.nc").write_bytes((tmp_path / "cut.nc").read_bytes()[:600])
    with pytest.raises(FormatError, match=r"cut.nc: cannot be read as HDF5/netCDF4, truncated or corrupt"):
        read_any(tmp_path / "cut.nc")
    (tmp_path / "x.csv").write_text("1")
    with pytest.raises(FormatError, match=r"unsupported extension '.csv'"):
        read_any(tmp_path / "x.csv")


def test_convert_cli_and_nan_handling(tmp_path):
    u = RNG.normal(size=(3, 4, 1, 8, 8)).astype(np.float32)
    u[1, 2, 0, 1, 1] = np.inf
    np.savez(tmp_path / "heat.npz", u=u)
    runner = CliRunner()
    out = tmp_path / "corpus"
    result = runner.invoke(app, ["convert", str(tmp_path / "heat.npz"), "--out", str(out), "--fields", "s"])
    assert result.exit_code != 0 and "field 's' has 1 NaN/Inf value(s) at time index 2" in str(
        result.exception
    )
    assert not out.exists() or not list(out.rglob("*.parquet"))
    args = ["convert", str(tmp_path / "heat.npz"), "--out", str(out), "--fields", "s", "--skip-invalid"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "2 trajectories written, 1 skipped" in result.output
    back = load_trajectories(out)
    np.testing.assert_array_equal(back[1].u, u[2])
    with pytest.raises(ValueError, match="already holds a corpus"):
        write_corpus(out, back, progress=False)
    assert len(load_trajectories(out)) == 2
