"""Messages between consecutive stages over torch.distributed point-to-point sends: one message per batch,
its receive posted before it is sent, backpressure, and a timeout on every wait; and a stage's state handed
to stage 1 at the epoch's end, its tensors' bytes in one buffer."""

from __future__ import annotations

import datetime
import io
import math
import pickle
import time
from collections import deque
from typing import Any

import torch
import torch.distributed as dist

from .layout import ParallelError, timeout_seconds

BATCH, SYNC, LOAD, STOP, RESIZE = 1, 2, 3, 4, 5
STATE_TAG = 1  # a handover's messages (the batches' are tag 0)
HEADER = 12  # kind, lr fraction, dtype, ndim, up to 6 sizes, labels
DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


class Link:
    """One stage's ends of the line: receive from the stage below, send to the stage above."""

    def __init__(self, rank: int, device: torch.device, in_flight: int) -> None:
        self.rank, self.in_flight = rank, in_flight
        self.wire = device if dist.get_backend() == "nccl" else torch.device("cpu")
        self.open_sends: deque[dist.Work] = deque()
        # Bytes of every message each way (a middle stage has both); RESIZE grows them to the largest batch.
        self.capacity_in = self.capacity_out = HEADER * 8
        self.sources: set[int] = set()  # every rank a message came from: only ever rank - 1
        self.waiting = 0.0  # seconds blocked on the stage below (receive) or above (backpressure)
        self.next_message: tuple[torch.Tensor, dist.Work] | None = None  # a receive already posted

    def send(
        self, kind: int, a: torch.Tensor | None = None, y: torch.Tensor | None = None, lr: float = 0.0
    ) -> None:
        """One message: a header (kind, learning-rate fraction, the activation's dtype and shape, the batch
        size), then for a batch the labels' and the activation's bytes, padded to the link's capacity, so
        that the next stage can post its receive before the message exists (see recv)."""
        fields = [float(kind), lr] + [0.0] * (HEADER - 2)  # filled in Python: one tensor op, not ten
        batch: list[torch.Tensor] = []
        if a is not None and y is not None:
            fields[2], fields[3], fields[10] = DTYPES.index(a.dtype), a.dim(), len(y)
            fields[4 : 4 + a.dim()] = a.shape
            # The labels first: they start 8-aligned whatever the activation's dtype and size.
            batch = [y.view(torch.uint8), a.detach().contiguous().view(-1).view(torch.uint8)]
        payload = [torch.tensor(fields, dtype=torch.float64).view(torch.uint8), *batch]
        size = sum(len(p) for p in payload)
        if size > self.capacity_out:  # tell the next stage first, in a message of the size it expects
            self.send(RESIZE, lr=size)  # (the new size where a batch has its learning-rate fraction)
            self.capacity_out = size
        message = torch.empty(self.capacity_out, dtype=torch.uint8, device=self.wire)  # padding unread
        torch.cat([p.to(self.wire) for p in payload], out=message[:size])
        self.open_sends.append(dist.isend(message, self.rank + 1))
        start = time.perf_counter()
        while len(self.open_sends) > self.in_flight:  # backpressure: wait until the next stage takes one
            self._wait(self.open_sends.popleft(), f"stage {self.rank + 2} to take a message")
        self.waiting += time.perf_counter() - start

    def flush(self) -> None:
        while self.open_sends:
            self._wait(self.open_sends.popleft(), f"stage {self.rank + 2} to take a message")

    def recv(self) -> tuple[int, torch.Tensor | None, torch.Tensor | None, float]:
        """The next message from the stage below. Its receive was posted as soon as the one before had
        arrived: the transfer overlaps this stage's step instead of following it."""
        start = time.perf_counter()
        try:
            while True:
                message, work = self.next_message or self._post()
                self.next_message = None
                self._wait(work, f"stage {self.rank} to send")
                source = work._source_rank() if self.wire.type == "cpu" else self.rank - 1
                self.sources.add(source)
                assert source == self.rank - 1, f"stage {self.rank + 1} got a message from stage {source + 1}"
                header = message[: HEADER * 8].cpu().view(torch.float64).tolist()
                kind, lr = int(header[0]), header[1]
                if kind == RESIZE:
                    self.capacity_in = int(lr)
                if kind != STOP:
                    self.next_message = self._post()
                if kind != RESIZE:
                    break
        finally:
            self.waiting += time.perf_counter() - start
        if kind != BATCH:
            return kind, None, None, lr
        shape = [int(size) for size in header[4 : 4 + int(header[3])]]
        dtype, labels = DTYPES[int(header[2])], int(header[10]) * 8
        size = math.prod(shape) * dtype.itemsize
        payload = message[HEADER * 8 :]
        y, a = payload[:labels].view(torch.long), payload[labels : labels + size].view(dtype)
        return kind, a.view(shape), y, lr

    def _post(self) -> tuple[torch.Tensor, dist.Work]:
        message = torch.empty(self.capacity_in, dtype=torch.uint8, device=self.wire)
        if self.wire.type == "cpu":  # gloo: from any rank, so that the assertion in recv can fail
            return message, dist.irecv(message)
        return message, dist.irecv(message, self.rank - 1)  # NCCL has no receive from any rank

    @staticmethod
    def _wait(work: dist.Work, what: str) -> None:
        seconds = timeout_seconds()
        if not work.wait(datetime.timedelta(seconds=seconds)):
            raise ParallelError(f"waited {seconds:.0f} s for {what} ($LOCALEARN_PARALLEL_TIMEOUT)")


# -- the epoch's handover: a stage's state, to stage 1 -----------------------------------------------------
# torch.distributed.gather_object pickles every tensor and pads every rank's bytes to the largest: 81 ms for
# Mono-Forward's unit 2 with its Adam state (12 MB) on the 2-core CPU, against 20 ms for its tensors' bytes in
# one buffer (benchmarks/link_costs.py). Only the dtypes and shapes and the rest of the report are pickled:
# pickle's persistent ids leave each tensor out, in its place its index in the buffer.
class _TensorsApart(pickle.Pickler):
    """Pickles all but the tensors, which it keeps in ``tensors`` and writes as their index."""

    def __init__(self, file: io.BytesIO) -> None:
        super().__init__(file)
        self.tensors: list[torch.Tensor] = []

    def persistent_id(self, obj: Any) -> int | None:
        if not isinstance(obj, torch.Tensor):
            return None
        self.tensors.append(obj)
        return len(self.tensors) - 1


class _TensorsBack(pickle.Unpickler):
    """Unpickles what _TensorsApart wrote, each index replaced by its tensor."""

    def __init__(self, data: bytes, tensors: list[torch.Tensor]) -> None:
        super().__init__(io.BytesIO(data))
        self.tensors = tensors

    def persistent_load(self, index: int) -> torch.Tensor:
        return self.tensors[index]


def _extents(layout: list[tuple[torch.dtype, torch.Size]]) -> list[tuple[int, int]]:
    """Each tensor's bytes in the buffer, every start a multiple of 16 (so that each can be viewed as its
    dtype)."""
    extents, offset = [], 0
    for dtype, shape in layout:
        size = math.prod(shape) * dtype.itemsize
        extents.append((offset, size))
        offset += -(-size // 16) * 16
    return extents


def send_handover(report: Any, wire: torch.device) -> None:
    """Send a stage's report (any picklable object, tensors anywhere in it) to stage 1 (rank 0)."""
    skeleton = io.BytesIO()
    pickler = _TensorsApart(skeleton)
    pickler.dump(report)
    tensors = pickler.tensors
    layout = [(t.dtype, t.shape) for t in tensors]
    meta = torch.frombuffer(bytearray(pickle.dumps((skeleton.getvalue(), layout))), dtype=torch.uint8)
    extents = _extents(layout)
    buffer = torch.empty(extents[-1][0] + extents[-1][1] if extents else 0, dtype=torch.uint8, device=wire)
    for t, (start, size) in zip(tensors, extents, strict=True):
        buffer[start : start + size] = t.detach().reshape(-1).view(torch.uint8)
    sizes = torch.tensor([len(meta), len(buffer)], dtype=torch.int64)
    for part in (sizes, meta, buffer):
        Link._wait(dist.isend(part.to(wire), 0, tag=STATE_TAG), "stage 1 to take a stage's state")


def recv_handover(source: int, wire: torch.device) -> Any:
    """Stage source + 1's report, sent by send_handover, its tensors on the wire's device. Each is a copy
    of its bytes, not a view of the buffer: views of one storage as several dtypes cannot be saved, and
    the rule keeps some of them (as its optimizers' state) until the next checkpoint."""
    what = f"stage {source + 1} to send its state"
    sizes = torch.empty(2, dtype=torch.int64, device=wire)
    Link._wait(dist.irecv(sizes, source, tag=STATE_TAG), what)
    meta = torch.empty(int(sizes[0]), dtype=torch.uint8, device=wire)
    buffer = torch.empty(int(sizes[1]), dtype=torch.uint8, device=wire)
    Link._wait(dist.irecv(meta, source, tag=STATE_TAG), what)
    Link._wait(dist.irecv(buffer, source, tag=STATE_TAG), what)
    skeleton, layout = pickle.loads(meta.cpu().numpy().tobytes())
    tensors = [
        buffer[start : start + size].view(dtype).view(shape).clone()
        for (dtype, shape), (start, size) in zip(layout, _extents(layout), strict=True)
    ]
    return _TensorsBack(skeleton, tensors).load()
