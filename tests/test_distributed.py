"""Scale-out: two DistributedDataParallel processes (gloo, CPU) compute the same training steps as one
process with the same global batch, through the training scripts' own step functions; a training
run killed with SIGKILL resumes exactly from its last checkpoint and leaves no temporary file."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mvfr import distributed

ROOT = Path(__file__).resolve().parent.parent
STEPS = 3  # training steps per stage in the comparison
LR = 0.01  # SGD learning rate of the comparison (see test_two_processes_match_one_process_with_the_same_global_batch)
D, INTERVAL_MM = 21, 0.5  # hypotheses and step of the fabricated score volumes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    """The suite's tiny datasets: fabricated IF/regulariser training faces (test_texture; with the
    template as base mesh) and texture/displacement pairs (test_dpmap)."""
    from test_dpmap import _tiny_dataset
    from test_texture import fabricate_dataset, template_cm

    from mvfr.datafolder import DataFolder
    from mvfr.mesh_io import Mesh, write_obj

    root = tmp_path_factory.mktemp("ddp")
    fabricate_dataset(root / "data", S=24, D=D, interval_mm=INTERVAL_MM, views=3, image_size=64)
    folder, t = DataFolder(root / "data"), template_cm()
    for fid in folder.face_ids("train"):
        write_obj(folder.fit_mesh(fid), Mesh(t.vertices, t.faces))
    (root / "dp").mkdir()
    _tiny_dataset(root / "dp", size=32)
    return root


def run_steps(root: Path) -> dict:
    """``STEPS`` training steps of each trained stage with the scripts' ``train_step`` (on this
    process's share of the global batch under a process group) -> final weights and logged records."""
    import train_if
    import train_reg
    from dpmap_pred import train as dp_train
    from models import build_implicit_function
    from models.reg_net import RegNet3D
    from mvfr.datafolder import DataFolder, RawFolder
    from mvfr.mvs.face_inputs import load_face_inputs
    from options import parse_options

    folder = DataFolder(root / "data")
    common = ["--dataroot", str(folder.root), "--device", "cpu", "--d_size", str(D), "--interval_scale", str(INTERVAL_MM)]
    out = {}

    opt = parse_options("train_reg", common + ["--reg_channels", "2", "--reg_levels", "2", "--reg_crop_size", "12", "--reg_batch_size", "3",
                                               "--reg_learning_rate", str(LR)])
    faces = [train_reg.load_training_face(folder, fid, opt.d_size, opt.interval_scale) for fid in folder.face_ids("train")]
    torch.manual_seed(0)
    model = RegNet3D(opt.reg_channels, opt.reg_levels)
    optimizer = torch.optim.SGD(model.parameters(), lr=opt.reg_learning_rate)
    net = distributed.wrap(model)
    records = [train_reg.train_step(net, optimizer, faces, s, STEPS, opt, "cpu") for s in range(STEPS)]
    out["reg"] = ({k: v.clone() for k, v in model.state_dict().items()}, records)

    opt = parse_options("train_if", common + ["--split", "train", "--feature_channels", "8", "--mlp_dim", "9-16-1",
                                              "--points_num", "96", "--if_faces_per_step", "3", "--if_learning_rate", str(5 * LR)])
    faces = [load_face_inputs(folder, "train", fid, opt.d_size, opt.interval_scale, with_gt=True) for fid in folder.face_ids("train")]
    torch.manual_seed(0)
    model = build_implicit_function(vars(opt))
    optimizer = torch.optim.SGD(model.parameters(), lr=opt.if_learning_rate)
    net = distributed.wrap(model)
    records = [train_if.train_step(net, optimizer, faces, s, opt, "cpu") for s in range(STEPS)]
    out["if"] = ({k: v.clone() for k, v in model.state_dict().items()}, records)

    dp = root / "dp"
    opt = parse_options("dpmap_train", ["--dataroot", str(dp / "data"), "--facescape_dataroot", str(dp / "raw"), "--device", "cpu",
                                        "--dp_size", "32", "--dp_crop", "32", "--dp_ngf", "4", "--dp_n_downsample", "2",
                                        "--dp_n_blocks", "1", "--dp_batch_size", "3", "--dp_lambda_gan", "0.1", "--dp_ndf", "4",
                                        "--dp_steps", str(STEPS), "--dp_learning_rate", str(LR)])
    pairs = [dp_train.load_pair(DataFolder(dp / "data"), RawFolder(dp / "raw"), fid, opt.dp_size, target="as_is")
             for fid in ("001_01", "001_02")]
    torch.manual_seed(0)
    model = dp_train.build_training_modules(opt)
    optimizer = torch.optim.SGD(model.parameters(), lr=opt.dp_learning_rate)
    generator, discriminator = distributed.wrap(model["generator"]), distributed.wrap(model["discriminator"])
    records = [dp_train.train_step(generator, discriminator, optimizer, pairs, s, opt, opt.dp_crop, "cpu") for s in range(STEPS)]
    out["dpmap"] = ({k: v.clone() for k, v in model.state_dict().items()}, records)
    return out


def _worker(rank: int, world: int, port: int, root: Path, out: Path) -> None:
    """One process as torchrun would start it: the environment, then the scripts' own init."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    assert distributed.init("cpu") == "cpu" and distributed.world_size() == world and distributed.rank() == rank
    try:
        torch.save(run_steps(root), out / f"rank{rank}.pt")
    finally:
        distributed.cleanup()


def test_two_processes_match_one_process_with_the_same_global_batch(tiny_data, tmp_path):
    """Global batches of 3 (crops, faces) split 2 + 1 over two gloo processes: both ranks end with
    identical weights, equal to one process's after the same 3 steps, and log the same losses.

    The comparison uses SGD: Adam's first steps are +-lr * sign(gradient), which turns the rounding
    noise of parameters whose true gradient is 0 (conv biases before InstanceNorm, the regulariser's
    head bias before the softmax) into lr-sized differences between any two summation orders."""
    torch.multiprocessing.spawn(_worker, args=(2, free_port(), tiny_data, tmp_path), nprocs=2, join=True)
    assert not distributed.is_initialised()
    single = run_steps(tiny_data)  # no process group: the plain single-process path
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    for stage, (weights, records) in single.items():
        (w0, rec0), (w1, rec1) = ranks[0][stage], ranks[1][stage]
        assert weights.keys() == w0.keys() == w1.keys()
        for k in weights:
            assert torch.equal(w0[k], w1[k]), (stage, k)
            torch.testing.assert_close(w0[k], weights[k], atol=1e-5, rtol=0, msg=f"{stage} {k}")
        assert rec0 == rec1  # every rank sees the global batch's figures
        for r, r0 in zip(records, rec0):
            assert r.keys() == r0.keys()
            for key, value in r.items():
                assert value == pytest.approx(r0[key], rel=1e-5, abs=1e-7) if isinstance(value, float) else value == r0[key]
        moved = max((weights[k] - v).abs().max().item() for k, v in first_weights(stage).items())
        assert moved > 1e-3, f"{stage}: the steps hardly changed the weights ({moved:.1e})"


def first_weights(stage: str) -> dict:
    """The initial weights of ``stage`` in :func:`run_steps` (seed 0), to check that training moved them."""
    from dpmap_pred import train as dp_train
    from models import build_implicit_function
    from models.reg_net import RegNet3D
    from options import parse_options

    torch.manual_seed(0)
    if stage == "reg":
        return RegNet3D(2, 2).state_dict()
    if stage == "if":
        return build_implicit_function({"feature_channels": 8, "mlp_dim": [9, 16, 1]}).state_dict()
    opt = parse_options("dpmap_train", ["--dp_ngf", "4", "--dp_n_downsample", "2", "--dp_n_blocks", "1", "--dp_lambda_gan", "0.1", "--dp_ndf", "4"])
    return dp_train.build_training_modules(opt).state_dict()


def test_shard_indices_and_item_rng_single_process():
    assert distributed.world_size() == 1 and distributed.is_main()
    assert distributed.shard_indices(3) == [0, 1, 2]
    a, b = distributed.item_rng(0, 5, 1).random(3), distributed.item_rng(0, 5, 1).random(3)
    assert np.array_equal(a, b) and not np.array_equal(a, distributed.item_rng(0, 5, 2).random(3))
    assert distributed.backend_for("cpu") == "gloo" and distributed.backend_for("cuda:1") == "nccl"
    x = torch.ones(2, requires_grad=True)
    assert torch.equal(distributed.all_reduce_sum(x), x.detach()) and distributed.broadcast_object("a") == "a"


# ------------------------------------------------------------------------------------------ resume


def test_log_of_a_resumed_run_keeps_each_step_once(tmp_path):
    """Opening the log of a run resumed at step 3 drops what a killed run logged after its checkpoint
    (steps 4, 5 and a half-written line) and the temporaries it left; later records append."""
    from mvfr.training import JsonlLogger, read_jsonl

    path = tmp_path / "logs" / "train.jsonl"
    first = JsonlLogger(path)
    for s in range(1, 6):
        first.log(step=s, loss=1.0 / s)
    with open(path, "a") as f:
        f.write('{"step": 6, "lo')
    stale = path.parent / ".loss.k3j2h1g0.tmp.png"
    stale.write_bytes(b"partial")
    resumed = JsonlLogger(path, resume_step=3)
    assert [r["step"] for r in read_jsonl(path)] == [1, 2, 3] and not stale.exists()
    resumed.log(step=4, loss=0.2)
    assert [r["step"] for r in read_jsonl(path)] == [1, 2, 3, 4]
    assert read_jsonl(path)[1]["loss"] == 0.5
    JsonlLogger(path, resume_step=0)  # a fresh run (no checkpoint) starts a fresh log
    assert read_jsonl(path) == []



STALL_S = 600  # a subprocess that logs nothing for this long hangs (a step takes well under a second)


def test_killed_training_resumes_from_its_last_checkpoint(tiny_data, tmp_path):
    """dpmap_pred/train.py as a subprocess, SIGKILLed after its first checkpoint, then rerun: it goes
    on from the newest checkpoint (step count and Adam state: it ends with the weights and optimizer
    state of an uninterrupted run), the log has every step once, and no temporary file is left."""
    import shutil

    from dpmap_pred import train as dp_train
    from mvfr.training import list_checkpoints, read_checkpoint, read_jsonl

    def dataset(name: str) -> list[str]:
        shutil.copytree(tiny_data / "dp", tmp_path / name)
        return ["--dataroot", str(tmp_path / name / "data"), "--facescape_dataroot", str(tmp_path / name / "raw"), "--device", "cpu",
                "--ids", "001_01", "001_02", "--dp_target", "as_is", "--dp_size", "32", "--dp_crop", "16", "--dp_ngf", "4", "--dp_n_downsample", "2",
                "--dp_n_blocks", "1", "--dp_batch_size", "2", "--dp_save_every", "3", "--dp_log_every", "1"]

    killed = dataset("killed")
    ckpt_dir = tmp_path / "killed" / "data" / "checkpoints" / "dpmap"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, str(ROOT / "dpmap_pred" / "train.py"), *killed, "--dp_steps", "100000"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log_file = tmp_path / "killed" / "data" / "logs" / "dpmap" / "train_dpmap.jsonl"
    try:
        # Wait for the first checkpoint as long as the run makes progress (100000 steps: it cannot end on its
        # own first). No deadline on the whole wait, so a loaded machine only makes it longer; only a run
        # that logs no step for STALL_S seconds (start-up included) counts as hung.
        last_size, last_change = -1, time.monotonic()
        while not list_checkpoints(ckpt_dir) and proc.poll() is None:
            size = log_file.stat().st_size if log_file.is_file() else 0
            if size != last_size:
                last_size, last_change = size, time.monotonic()
            assert time.monotonic() - last_change < STALL_S, f"dpmap_pred/train.py logged no step for {STALL_S} s"
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before it wrote a checkpoint (it failed: rerun it by hand to see why)"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    ckpts = list_checkpoints(ckpt_dir)
    last = read_checkpoint(ckpts[-1], "mvfr-dpmap-v1")  # whatever was on disk at the kill loads whole
    c = last["step"]
    assert c % 3 == 0 and c > 0 and ckpts[-1].name == f"step_{c:08d}.pt"
    assert all(s["step"] == c for s in last["optimizer"]["state"].values())  # Adam's per-parameter step count
    # A checkpoint write killed midway leaves a temporary beside the checkpoints: a rerun removes it.
    (ckpt_dir / f".step_{c + 3:08d}.abcd1234.tmp.pt").write_bytes(b"partial")

    # A rerun to step c trains nothing: the generator it writes is the one it resumed, bit for bit.
    assert dp_train.main(killed + ["--dp_steps", str(c)]) == 0
    loaded = read_checkpoint(ckpt_dir / "checkpoint_dpmap.pt")
    assert loaded["step"] == c and loaded["optimizer"] is None
    assert all(torch.equal(v, last["model"][f"generator.{k}"]) for k, v in loaded["model"].items())
    assert not (ckpt_dir / f".step_{c + 3:08d}.abcd1234.tmp.pt").exists()

    # Rerun to T = 2c + 2: the learning rate is constant before T / 2, so the killed run's first c
    # steps are those of an uninterrupted run to T (the schedule depends on --dp_steps).
    total = 2 * c + 2
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the subprocess (OMP_NUM_THREADS=1): the same summation order
    try:
        assert dp_train.main(killed + ["--dp_steps", str(total)]) == 0
        assert dp_train.main(dataset("uninterrupted") + ["--dp_steps", str(total)]) == 0
    finally:
        torch.set_num_threads(threads)
    resumed = read_checkpoint(ckpt_dir / f"step_{total:08d}.pt")
    reference = read_checkpoint(tmp_path / "uninterrupted" / "data" / "checkpoints" / "dpmap" / f"step_{total:08d}.pt")
    assert resumed["step"] == reference["step"] == total
    for k, v in reference["model"].items():
        torch.testing.assert_close(resumed["model"][k], v, atol=1e-5, rtol=0, msg=k)
    for i, state in reference["optimizer"]["state"].items():
        assert resumed["optimizer"]["state"][i]["step"] == state["step"] == total
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(resumed["optimizer"]["state"][i][key], state[key], atol=1e-6, rtol=1e-4)
    steps = [r["step"] for r in read_jsonl(tmp_path / "killed" / "data" / "logs" / "dpmap" / "train_dpmap.jsonl")]
    assert steps == list(range(1, total + 1))
    leftovers = [p for p in (tmp_path / "killed").rglob("*") if ".tmp" in p.name]
    assert not leftovers, leftovers
