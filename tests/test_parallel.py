"""Layer-parallel runs (localearn.parallel): the same parameters as one process, no backward locking,
refusals, and a killed stage (error, then resume) through the command line."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import gaussian_blobs
from test_algorithms import build
from test_cli import COMMON, cli_env, final_figures, run_cli

from localearn import Trainer, parallel
from localearn.algorithms import ALGORITHMS, AlgorithmFactory
from localearn.experiments.__main__ import main

pytestmark = pytest.mark.timeout(240)
LOCAL_FG = {"variant": "local_activity"}


@pytest.fixture(autouse=True)
def short_timeout(monkeypatch):
    """A stage that hangs fails the test within a minute (the library's own timeout, not only pytest's)."""
    monkeypatch.setenv("LOCALEARN_PARALLEL_TIMEOUT", "60")


@pytest.fixture(scope="module")
def splits():
    return gaussian_blobs(400, 1), gaussian_blobs(64, 2), gaussian_blobs(64, 3)


def tensors(state, prefix=""):
    """Every tensor of a nested state, by its path."""
    if isinstance(state, torch.Tensor):
        return {prefix: state}
    if isinstance(state, dict):
        items = state.items()
    elif isinstance(state, list | tuple):
        items = enumerate(state)
    else:
        return {}
    return {k: v for key, value in items for k, v in tensors(value, f"{prefix}/{key}").items()}


def one_thread(fn):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn()
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize(
    "algo, hp, stages",
    [
        ("mono_forward", {}, 2),
        ("mono_forward", {}, 3),
        ("forward_forward", {}, 2),
        ("forward_forward", {"peer_normalisation": 0.03}, 3),
        ("forward_gradient", {**LOCAL_FG, "num_tangents": 2, "groups": 4}, 2),
    ],
)
def test_the_parallel_run_computes_what_one_process_computes(algo, hp, stages, splits, tmp_path):
    """50 steps (2 epochs of 25), one thread per process, the same seed and batch order: every tensor of the
    rule's state (weights, projections, optimizer moments, running means, tangent generators' states) is
    equal, bit for bit."""
    train, val, test = splits
    factory = AlgorithmFactory(algo, "mlp:16,16,16", 4, (20,), 0, {"lr": 1e-2, **hp})
    options = dict(epochs=2, batch_size=16, patience=None, progress=False)
    alone = one_thread(lambda: Trainer(factory("cpu"), *splits, run_dir=tmp_path / "one", **options).fit())
    split = parallel.fit(
        factory, train, val, test, world_size=stages, threads_per_stage=1, run_dir=tmp_path / "k", **options
    )
    one = tensors(torch.load(tmp_path / "one" / "checkpoint.pt", weights_only=False)["algo"])
    many = tensors(torch.load(tmp_path / "k" / "checkpoint.pt", weights_only=False)["algo"])
    assert one.keys() == many.keys() and len(one) > 10
    assert any("optimizers" in k for k in one)
    unequal = [k for k in one if not torch.equal(one[k], many[k])]
    assert not unequal, unequal
    assert split.test_accuracy == alone.test_accuracy and split.best_val_accuracy == alone.best_val_accuracy
    # And every unit moved: the equality is of trained weights, not of untouched ones.
    start = tensors(factory("cpu").state_dict())
    weights = [k for k in one if k.startswith("/net/") and k.endswith("weight")]
    moved = [k for k in weights if not torch.equal(start[k], one[k])]
    assert len(moved) >= stages and len(moved) >= len(weights) - 1, (weights, moved)  # FF: its head is unused
    layout = split.extra["parallel"]
    assert (
        layout["world_size"] == stages and [s["steps_last_epoch"] for s in layout["stages"]] == [25] * stages
    )
    # Every stage heard from the stage below and from no one else.
    assert [s["received_from"] for s in layout["stages"]] == [[]] + [[k] for k in range(1, stages)]
    config = json.loads((tmp_path / "k" / "config.json").read_text())
    assert [s["units"] for s in config["parallel"]["stages"]] == [s["units"] for s in layout["stages"]]


@pytest.mark.parametrize(
    "algo, hp, stages",
    [
        ("mono_forward", {}, None),
        ("forward_forward", {}, 2),
        ("forward_gradient", {**LOCAL_FG, "num_tangents": 2, "groups": 4}, None),
    ],
)
def test_the_wavefront_computes_what_one_process_computes(algo, hp, stages, splits, tmp_path):
    """The one-device schedule (stage r on batch t-r at tick t), 50 steps: every tensor of the state equal,
    bit for bit, to the one-process run's; every stage took every batch of the epoch (the pipe drained)."""
    factory = AlgorithmFactory(algo, "mlp:16,16,16", 4, (20,), 0, {"lr": 1e-2, **hp})
    options = dict(epochs=2, batch_size=16, patience=None, progress=False)
    alone = Trainer(factory("cpu"), *splits, run_dir=tmp_path / "one", **options).fit()
    wave = parallel.fit(
        factory, *splits, mode="wavefront", world_size=stages, run_dir=tmp_path / "w", **options
    )
    one = tensors(torch.load(tmp_path / "one" / "checkpoint.pt", weights_only=False)["algo"])
    many = tensors(torch.load(tmp_path / "w" / "checkpoint.pt", weights_only=False)["algo"])
    assert one.keys() == many.keys() and len(one) > 10
    unequal = [k for k in one if not torch.equal(one[k], many[k])]
    assert not unequal, unequal
    assert wave.test_accuracy == alone.test_accuracy and wave.best_val_accuracy == alone.best_val_accuracy
    layout = wave.extra["parallel"]
    assert layout["mode"] == "wavefront" and layout["world_size"] == (stages or 3)
    assert [s["steps_last_epoch"] for s in layout["stages"]] == [25] * layout["world_size"]
    assert json.loads((tmp_path / "w" / "config.json").read_text())["parallel"]["mode"] == "wavefront"


def test_the_wavefront_trains_stage_r_on_batch_t_minus_r():
    """Which stage trains on which batch, in order: at tick t stage r takes batch t-r, the output stage r-1
    made from it at tick t-1; after the last batch the pipe drains. Labels name the batches."""
    algo = build("mono_forward", hidden=(8, 8, 8))  # three units, each with its projection
    head = parallel.Wavefront(algo, parallel.plan(algo, mode="wavefront"))
    calls, train_units = [], algo.train_units

    def spy(a, y, units):
        calls.append((units.start, int(y[0])))
        return train_units(a, y, units)

    algo.train_units = spy
    batches = 4
    for t in range(batches):
        head.train_step(torch.randn(2, 20), torch.full((2,), t))
    head.settle()
    ticks = range(batches + 2)
    assert calls == [(r, t - r) for t in ticks for r in range(3) if 0 <= t - r < batches]


def test_the_wavefront_runs_from_the_command_line_as_one_process_does(one_process_run, tmp_path, capsys):
    common, alone = one_process_run
    args = [*common, "--parallel", "wavefront", "--out", str(tmp_path / "w")]
    done = run_cli(args, tmp_path / "cache")
    assert done.returncode == 0, done.stderr
    assert final_figures(tmp_path / "w" / "run") == final_figures(alone)
    assert main([*common, "--parallel", "wavefront", "--devices", "cpu,cpu"]) == 2
    assert "--parallel wavefront runs on one device" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_the_wavefront_on_cuda_streams_computes_what_one_process_computes(splits, tmp_path):
    """On a GPU each stage's step runs on a stream of its own; the fences keep the same numbers (to the
    rounding of kernels that may pick other algorithms on other streams)."""
    factory = AlgorithmFactory("mono_forward", "mlp:64,64,64", 4, (20,), 0, {"lr": 1e-2})
    options = dict(epochs=2, batch_size=16, patience=None, progress=False)
    cuda = [dataclasses.replace(s, x=s.x.cuda(), y=s.y.cuda()) for s in splits]
    Trainer(factory("cuda"), *cuda, run_dir=tmp_path / "one", **options).fit()
    wave = parallel.fit(factory, *cuda, mode="wavefront", run_dir=tmp_path / "w", **options)
    assert wave.extra["parallel"]["streams"]
    one = tensors(torch.load(tmp_path / "one" / "checkpoint.pt", weights_only=False)["algo"])
    many = tensors(torch.load(tmp_path / "w" / "checkpoint.pt", weights_only=False)["algo"])
    for k in one:
        torch.testing.assert_close(many[k], one[k], rtol=1e-4, atol=1e-5, msg=k)


@pytest.mark.parametrize("in_flight, ahead", [(16, True), (2, False)])
def test_a_slow_last_stage_does_not_hold_back_the_first(in_flight, ahead, splits):
    """The last stage sleeps 0.5 s per step. Without backward locking the first stage runs ahead as far as
    the open sends allow: with 16 it ends its 8 steps about 4 s before the last stage does; with 2 it is
    held to about 3 steps ahead (backpressure). With backward locking it could never be ahead at all."""
    train, val, test = splits
    factory = AlgorithmFactory("mono_forward", "mlp:16,16", 4, (20,), 0, {})
    result = parallel.fit(
        factory, gaussian_blobs(128, 1), val, test, world_size=2, in_flight=in_flight, step_delays={1: 0.5},
        threads_per_stage=1, epochs=1, batch_size=16, patience=None, progress=False,
    )  # fmt: skip
    first, last = result.extra["parallel"]["stages"]
    assert first["steps_last_epoch"] == last["steps_last_epoch"] == 8
    lead = last["finished_after_stage1_s"]
    if ahead:
        assert lead > 2.5, lead  # 8 x 0.5 s of the last stage's sleep, less its first step
    else:
        assert 0.5 < lead < 2.5, lead  # at most in_flight + 1 steps ahead


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_every_rule_runs_layer_parallel_or_says_why_not(name):
    algo = build(name)
    why = algo.parallel_refusal()
    if why is None:
        layout = parallel.plan(algo, 2)
        assert (
            layout.world_size == 2
            and layout.stages[0][0] == 0
            and layout.stages[-1][1] == len(algo.pipeline_units())
        )
        wavefront = parallel.plan(algo, mode="wavefront")  # one stage per unit
        assert wavefront.stages == tuple((i, i + 1) for i in range(len(algo.pipeline_units())))
        return
    for mode in parallel.MODES:
        with pytest.raises(ValueError, match="cannot train layer-parallel") as error:
            parallel.plan(algo, 2, mode=mode)
        assert why in str(error.value)


@pytest.mark.parametrize(
    "algo, hp, reason",
    [
        ("backprop", {}, "gradients through the units above"),
        ("dfa", {}, "output error"),
        ("counter_current", {}, "feedback network"),
        ("forward_gradient", {"variant": "weight"}, "gradients through the units above"),
        ("mono_forward", {"schedule": "sequential"}, "schedule=sequential"),
        ("forward_forward", {"prediction": "readout"}, "readout"),
        ("forward_forward", {"negatives": "hard"}, "readout"),
    ],
)
def test_rules_with_a_top_down_signal_are_refused_with_the_reason(algo, hp, reason):
    with pytest.raises(ValueError, match=reason):
        parallel.plan(build(algo, **hp), 2)
    for name, ok in [("mono_forward", {}), ("forward_forward", {}), ("forward_gradient", LOCAL_FG)]:
        assert build(name, **ok).parallel_refusal() is None


def handover_sample():
    """A stage's report with tensors of every kind a state holds: sizes that break 16-byte alignment, a
    0-dim step, a transposed (non-contiguous) weight, bool and integer tensors, next to plain values."""
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(5, 3, generator=g).t()
    return {
        "stage": 2,
        "units": {1: {"weight": weight, "bias": torch.randn(3, generator=g, dtype=torch.float64)}},
        "optimizers": [{0: {"step": torch.tensor(7.0), "exp_avg": torch.randn(1, 1, 1, generator=g)}}],
        "masks": (torch.tensor([True, False, True]), torch.arange(5), torch.empty(0, 4)),
        "peak_memory": (123, "rss"),
    }


def gloo_pair(rank, port, body, out):
    """Process ``rank`` of two in a gloo group: ``body(rank, out)``; the receiving side saves to ``out``."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    try:
        body(rank, out)
    finally:
        torch.distributed.destroy_process_group()


def in_gloo_pair(body, out):
    torch.multiprocessing.spawn(gloo_pair, args=(parallel._free_port(), body, out), nprocs=2)
    return torch.load(out)


def handover_roundtrip(rank, out):
    from localearn.parallel.link import recv_handover, send_handover

    if rank == 1:
        send_handover(handover_sample(), torch.device("cpu"))
    else:
        torch.save(recv_handover(1, torch.device("cpu")), out)


def test_a_stage_state_reaches_stage_1_as_it_was_sent(tmp_path):
    got, sent = in_gloo_pair(handover_roundtrip, tmp_path / "got.pt"), handover_sample()
    assert {k: v for k, v in got.items() if k not in ("units", "optimizers", "masks")} == {
        "stage": 2,
        "peak_memory": (123, "rss"),
    }
    assert type(got["masks"]) is tuple
    expected, arrived = tensors(sent), tensors(got)
    assert arrived.keys() == expected.keys()
    for path, tensor in expected.items():
        assert arrived[path].dtype == tensor.dtype and torch.equal(arrived[path], tensor), path


def link_batches():
    """What a link carries: batches that grow (a larger message), shrink, and have odd sizes and dtypes."""
    g = torch.Generator().manual_seed(1)
    sizes = [(4, 3, torch.float32), (9, 5, torch.float32), (3, 7, torch.float16), (9, 5, torch.float64)]
    return [
        (torch.randn(n, w, generator=g).to(dtype), torch.randint(10, (n,), generator=g))
        for n, w, dtype in sizes * 3
    ]


def link_roundtrip(rank, out):
    from localearn.parallel.link import BATCH, STOP, Link

    link = Link(rank, torch.device("cpu"), 1)
    if rank == 0:
        for a, y in link_batches():
            link.send(BATCH, a, y, 0.25)
        link.send(STOP)
        link.flush()
    else:
        got = []
        while (message := link.recv())[0] != STOP:
            got.append([t.clone() for t in message[1:3]] + [message[3]])
        torch.save(got, out)


def test_a_link_carries_every_batch_as_it_was_sent(tmp_path):
    got, batches = in_gloo_pair(link_roundtrip, tmp_path / "got.pt"), link_batches()
    assert len(got) == len(batches)
    for (a, y, lr), (sent_a, sent_y) in zip(got, batches, strict=True):
        assert a.dtype == sent_a.dtype and torch.equal(a, sent_a) and torch.equal(y, sent_y) and lr == 0.25


def test_more_stages_than_units_is_refused():
    with pytest.raises(ValueError, match="needs 2 to 3 stages"):
        parallel.plan(build("mono_forward", hidden=(8, 8, 8)), 4)


def test_the_stages_share_the_parameters_out():
    assert parallel.balanced_split([10, 10, 10, 10], 2) == [(0, 2), (2, 4)]
    assert parallel.balanced_split([30, 10, 10, 10], 2) == [(0, 1), (1, 4)]
    assert parallel.balanced_split([1, 1, 8], 3) == [(0, 1), (1, 2), (2, 3)]


def test_the_command_line_refuses_a_rule_with_a_top_down_signal(image_tree, tmp_path, capsys):
    args = [str(image_tree), "--algo", "dfa", *COMMON, "--parallel", "units", "--world-size", "2"]
    assert main([*args, "--out", str(tmp_path), "--cache-dir", str(tmp_path / "cache")]) == 2
    assert "error: dfa cannot train layer-parallel: dfa's update" in capsys.readouterr().err
    assert not any(tmp_path.glob("*/config.json"))
    assert main([str(image_tree), "--algo", "mono_forward", "--world-size", "2"]) == 2
    assert "--world-size and --devices need --parallel units" in capsys.readouterr().err


def killed_run(args, stage, step, tmp_path):
    """The command line with stage ``stage`` SIGKILLed on its ``step``-th step; the stages' pids."""
    pids = tmp_path / f"pids{stage}"
    pids.mkdir()
    env = cli_env(tmp_path / "cache")
    env.update(
        LOCALEARN_PLUGINS=env["LOCALEARN_PLUGINS"] + ",parallel_killer",
        KILL_STAGE=str(stage), KILL_AT=str(step), PIDS_DIR=str(pids),
    )  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "localearn.experiments", *args],
        env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    return done, {int(p.stem[5:]): int(p.read_text()) for p in pids.iterdir()}


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie has died; only its parent has not reaped it yet.
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(")")[-1].split()[0] != "Z"


@pytest.fixture(scope="module")
def one_process_run(image_tree, tmp_path_factory):
    """The command line's one-process Mono-Forward run that the killed parallel runs must end up equal to."""
    root = tmp_path_factory.mktemp("one")
    args = [str(image_tree), "--algo", "mono_forward", *COMMON, "--name", "run"]
    alone = run_cli([*args, "--out", str(root)], root / "cache")
    assert alone.returncode == 0, alone.stderr
    return args, root / "run"


@pytest.mark.parametrize("stage", [1, 2])
def test_a_killed_stage_stops_the_run_with_its_name_and_resume_finishes_it(stage, one_process_run, tmp_path):
    """SIGKILL of either stage's process in epoch 3: the run stops (no hang), a killed later stage is
    named, no stage process outlives the run, and --resume ends with the one-process run's figures."""
    common, alone = one_process_run
    args = [*common, "--parallel", "units", "--world-size", "2", "--out", str(tmp_path / "k")]
    start = time.monotonic()
    done, pids = killed_run(args, stage, 17, tmp_path)  # 7 steps per epoch: step 17 is in epoch 3
    assert time.monotonic() - start < 120
    if stage == 1:
        assert done.returncode == -signal.SIGKILL, done.stderr
    else:
        assert done.returncode == 1, done.stderr
        assert f"stage 2 of 2 (pid {pids[2]}) was killed by SIGKILL" in done.stderr, done.stderr
    deadline = time.monotonic() + 30
    while any(alive(pid) for pid in pids.values()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(alive(pid) for pid in pids.values())
    run = tmp_path / "k" / "run"
    assert not (run / "result.json").exists()
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    resumed = run_cli([*args, "--resume"], tmp_path / "cache")
    assert resumed.returncode == 0, resumed.stderr
    assert final_figures(run) == final_figures(alone)


def test_a_killed_wavefront_run_resumes_to_the_one_process_figures(one_process_run, tmp_path):
    """SIGKILL in epoch 3 of a --parallel wavefront run (two stages, 7 batches: 14 unit steps an epoch), then
    --resume: the one-process run's figures, epoch by epoch."""
    common, alone = one_process_run
    args = [*common, "--parallel", "wavefront", "--out", str(tmp_path / "w")]
    done, _ = killed_run(args, 0, 34, tmp_path)  # stage 0: the plugin's name for a run without processes
    assert done.returncode == -signal.SIGKILL, done.stderr
    run = tmp_path / "w" / "run"
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    resumed = run_cli([*args, "--resume"], tmp_path / "cache")
    assert resumed.returncode == 0, resumed.stderr
    assert final_figures(run) == final_figures(alone)
