"""An LRU in Triton's Python backend: lru-deploy's own runtime, the state of each sequence kept here.

`lru-deploy triton` copies this file as MODEL/1/model.py. Triton's Python backend runs it in a stub process per
instance, with the first `python3` on PATH (the environment needs lru-deploy and numpy < 2). The model's
parameters (config.pbtxt) say which folder under MODEL/1/ to open and with which backend: `onnxruntime` for an
export folder, `tensorrt` for an engine folder.

Per request (batch 1): `input_ids` [1, seq] (or `inputs` [1, seq, d_input]) and the sequence batcher's controls
START, END, READY, CORRID; the response is the prefill contract's `outputs` ([1, seq, vocab], or the pooled
[1, d_output]).
- A request with more than one position runs prefill; one position runs the step graph, batched with the other
  sequences' one-position requests of the same execution.
- START begins from the zero state, replacing whatever a stale sequence with the same id left; END drops the
  state after answering. A request without START for an id that has no state is refused with a message.
- READY = 0 marks the direct batcher's null requests (empty slots): answered with zeros, nothing run or kept.
- Triton releases a sequence that sent nothing for max_sequence_idle_microseconds without telling the model
  (and refuses its next request without START itself); states idle twice that long are dropped here, so they
  do not pile up, and never before Triton has let the sequence go.

Triton's Python backend accepts `sequence_batching { state [...] }` but never carries it, hence the state here.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("lru_deploy.serve.python_model")

# The parameter names, as lru_deploy.serve.config writes them (kept literal: this file runs alone in Triton).
P_TARGET, P_BACKEND, P_PRECISION = "lru_deploy_target", "lru_deploy_backend", "lru_deploy_precision"


def _host(state: dict) -> dict:
    """The state as host arrays: the TensorRT session hands back device tensors that live in buffers its next
    call reuses, so a state kept across calls must be downloaded (onnxruntime's arrays pass unchanged)."""
    return {k: np.asarray(v) for k, v in state.items()}


class TritonPythonModel:
    """Triton calls initialize(args) once per instance, execute(requests) per batch, finalize() at unload."""

    def initialize(self, args: dict) -> None:
        import triton_python_backend_utils as pb_utils  # provided by the Python backend's stub

        from lru_deploy import contract
        from lru_deploy.runtime import open_session

        self.pb = pb_utils
        self.contract = contract
        cfg = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in cfg.get("parameters", {}).items()}
        folder = Path(args["model_repository"]) / args["model_version"] / params[P_TARGET]
        backend = params[P_BACKEND]
        kwargs = {}
        if backend == "onnxruntime" and params.get(P_PRECISION):
            kwargs["precision"] = params[P_PRECISION]
        if backend == "tensorrt":
            kwargs["device"] = int(args.get("model_instance_device_id") or 0)
        self.session = open_session(folder, backend=backend, **kwargs)
        self.input_name = self.session.input_name
        self.out_spec = next(t for t in self.session.prefill_spec.outputs if t.name == contract.OUTPUTS)
        self.output_rank = len(self.out_spec.shape)  # with the batch axis
        self.vocab = self.session.cfg.vocab_size if self.session.cfg.tokens else None
        self.idle_s = int(cfg["sequence_batching"].get("max_sequence_idle_microseconds", 1_000_000)) / 1e6
        self.states: dict[int, tuple[dict, float]] = {}  # correlation id -> (state of batch 1, last used)
        self.name = args["model_name"]
        log.info("%s: %s session on %s ready (instance %s)", self.name, backend, folder,
                 args.get("model_instance_name"))

    # ------------------------------------------------------------ per batch

    def execute(self, requests: list) -> list:
        now = time.monotonic()
        self._drop_idle(now)
        responses: list = [None] * len(requests)
        steps = []  # (request index, corrid, input [1, ...], state or None, end)
        for i, request in enumerate(requests):
            try:
                item = self._read(request)
            except ValueError as e:
                responses[i] = self._error(str(e))
                continue
            if item is None:  # a null request of the direct batcher
                responses[i] = self._zeros()
                continue
            corrid, x, start, end = item
            if start:
                if corrid in self.states:
                    log.debug("%s: START of sequence %d replaces its stale state", self.name, corrid)
                self.states.pop(corrid, None)
                state = None
            elif corrid in self.states:
                state = self.states[corrid][0]
            else:
                responses[i] = self._error(
                    f"sequence {corrid} has no state in model {self.name}: it was never started, it ended, or "
                    f"Triton released it after {self.idle_s:g} s without a request; start it again with "
                    f"sequence_start")
                continue
            if x.shape[1] == 1:
                steps.append((i, corrid, x, state, end))
                continue
            try:
                out, new = self.session.prefill(x, state)
            except self._errors() as e:
                responses[i] = self._error(str(e))
                continue
            responses[i] = self._respond(out)
            self._keep(corrid, _host(new), end, now)
        if steps:
            self._steps(steps, responses, now)
        return responses

    def _steps(self, steps: list, responses: list, now: float) -> None:
        """One step call for every one-position request of this execution (zero state for those at START)."""
        zero = self.session.zero_state(1)
        states = [s if s is not None else zero for _, _, _, s, _ in steps]
        x = np.concatenate([x[:, 0] for _, _, x, _, _ in steps], axis=0)
        batch = {k: np.concatenate([s[k] for s in states], axis=0) for k in zero}
        try:
            out, new = self.session.step(x, batch)
        except self._errors() as e:
            for i, *_ in steps:
                responses[i] = self._error(str(e))
            return
        per_position = self.output_rank == 3
        out, new = np.asarray(out), _host(new)
        for row, (i, corrid, _, _, end) in enumerate(steps):
            o = out[row:row + 1]
            responses[i] = self._respond(o[:, None] if per_position else o)
            self._keep(corrid, {k: v[row:row + 1].copy() for k, v in new.items()}, end, now)

    # ------------------------------------------------------------ helpers

    def _read(self, request):
        """(corrid, input [1, ...], start, end), or None for a null request; ValueError for a bad request."""
        pb = self.pb

        def scalar(name: str) -> int:
            t = pb.get_input_tensor_by_name(request, name)
            if t is None:
                raise ValueError(f"the request has no {name} control input (is sequence batching on?)")
            return int(t.as_numpy().reshape(-1)[0])

        if not scalar("READY"):
            return None
        t = pb.get_input_tensor_by_name(request, self.input_name)
        if t is None:
            raise ValueError(f"the request has no {self.input_name} input")
        x = t.as_numpy()
        if x.ndim < 2 or x.shape[0] != 1 or x.shape[1] < 1:
            raise ValueError(f"{self.input_name} has shape {list(x.shape)}; a sequence sends one row of at least "
                             f"one position per request ([1, seq])")
        if self.vocab is not None and (x.min() < 0 or x.max() >= self.vocab):
            raise ValueError(f"{self.input_name} holds ids in [{x.min()}, {x.max()}], the model takes "
                             f"[0, {self.vocab - 1}]")
        return scalar("CORRID"), x, bool(scalar("START")), bool(scalar("END"))

    def _keep(self, corrid: int, state: dict, end: bool, now: float) -> None:
        if end:
            self.states.pop(corrid, None)
        else:
            self.states[corrid] = (state, now)

    def _drop_idle(self, now: float) -> None:
        stale = [c for c, (_, used) in self.states.items() if now - used > 2 * self.idle_s]
        for c in stale:
            del self.states[c]
        if stale:
            log.info("%s: dropped the state of %d sequence(s) idle for more than %g s (Triton released them)",
                     self.name, len(stale), 2 * self.idle_s)

    def _respond(self, out: np.ndarray):
        return self.pb.InferenceResponse(output_tensors=[
            self.pb.Tensor(self.contract.OUTPUTS, np.ascontiguousarray(out, dtype=np.float32))])

    def _zeros(self):
        shape = [1] + [1 if isinstance(d, str) else d for d in self.out_spec.shape[1:]]
        return self._respond(np.zeros(shape, np.float32))

    def _error(self, message: str):
        return self.pb.InferenceResponse(output_tensors=[], error=self.pb.TritonError(message))

    @staticmethod
    def _errors() -> tuple:
        from lru_deploy.errors import LRUDeployError
        return (LRUDeployError,)

    def finalize(self) -> None:
        self.states.clear()
