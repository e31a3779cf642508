"""Launch commands for a plan: one line per instance (per node for an instance spanning nodes).

Hosts are named node0, node1, ... (an 8-device node each by default); GPUs are handed out in
order, a unit that fits in a node never straddles two (as planner/candidates.replicas counts them).
Flags are SGLang 0.5.23's (sglang/srt/arg_groups/fields: --tp-size, --pp-size, --base-gpu-id,
--mem-fraction-static, --chunked-prefill-size, --enable-mixed-chunk, --disaggregation-mode,
--disaggregation-transfer-backend, --disaggregation-bootstrap-port, --nnodes, --node-rank,
--dist-init-addr) and `semipd serve` / `semipd tune`'s. The router lines are for the separate
`sglang-router` package (not installed with this project).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from planner.candidates import DEVICES_PER_NODE, Parallel, Plan, nodes_spanned

PORT, BOOTSTRAP_PORT, TUNER_PORT, ROUTER_PORT = 30000, 8998, 31000, 8000


@dataclass
class Slots:
    """GPUs handed out node by node; a low node-affinity unit is striped over a group of nodes
    (each instance gets its share of GPUs on every node of the group: one pipeline segment each)."""

    per_node: int = DEVICES_PER_NODE
    node: int = 0
    used: dict = field(default_factory=dict)   # node -> GPUs handed out
    count: dict = field(default_factory=dict)  # node -> instances started there
    group: list | None = None
    instances: int = 0

    def start_unit(self, devices: int, striped_over: int = 1) -> None:
        if self.used.get(self.node) and (striped_over > 1 or devices > self.per_node
                                         or self.used[self.node] + devices > self.per_node):
            self.node += 1
        self.group = list(range(self.node, self.node + striped_over)) if striped_over > 1 else None
        if self.group:
            self.node += striped_over

    def _at(self, node: int, devices: int) -> tuple[int, int, int]:
        slot = (node, self.used.get(node, 0), self.count.get(node, 0))
        self.used[node] = slot[1] + devices
        self.count[node] = slot[2] + 1
        return slot

    def take(self, devices: int) -> list[tuple[int, int, int]]:
        """[(node, first GPU, index of the instance on that node)] for each node the instance uses."""
        self.instances += 1
        if self.group:
            return [self._at(node, devices // len(self.group)) for node in self.group]
        if devices <= self.per_node:
            if self.used.get(self.node, 0) + devices > self.per_node:
                self.node += 1
            return [self._at(self.node, devices)]
        if self.used.get(self.node):
            self.node += 1
        slots = []
        for _ in range(-(-devices // self.per_node)):
            slots.append(self._at(self.node, self.per_node))
            self.node += 1
        return slots


def _sglang(model_path: str, par: Parallel, slots, mem_fraction: float, extra: list[str], instance: int) -> list[str]:
    lines = []
    for rank, (node, gpu, _) in enumerate(slots):
        args = ["python -m sglang.launch_server", f"--model-path {model_path}", f"--tp-size {par.tp}"]
        if par.pp > 1:
            args.append(f"--pp-size {par.pp}")
        if len(slots) > 1:  # one process group over several nodes (pipeline stages cut at nodes)
            args += [f"--nnodes {len(slots)}", f"--node-rank {rank}",
                     f"--dist-init-addr node{slots[0][0]}:{50000 + instance}"]
        args += [f"--base-gpu-id {gpu}", "--host 0.0.0.0", f"--port {PORT + slots[0][2]}",
                 f"--mem-fraction-static {mem_fraction}", *extra]
        lines.append(f"node{node}: " + " ".join(args))
    return lines


def launch_commands(plan: Plan, model_path: str, ttft_slo_s: float, tpot_slo_s: float,
                    policy: str = "mpc", split: tuple[int, int] = (100, 100), params: dict | None = None,
                    chunk_size: int = 8192,
                    transfer_backend: str = "mooncake", mem_fraction: float = 0.9,
                    devices_per_node: int = DEVICES_PER_NODE) -> list[str]:
    c = plan.candidate
    slots = Slots(devices_per_node)
    lines, workers, prefills, decodes = [], [], [], []
    url = lambda s: f"http://node{s[0][0]}:{PORT + s[0][2]}"
    striped = nodes_spanned(c.devices, devices_per_node) if c.affinity == "low" else 1
    for _ in range(plan.replicas):
        slots.start_unit(c.devices, striped)
        if c.kind == "colocated":
            s = slots.take(c.instance.devices)
            extra = [f"--chunked-prefill-size {c.chunk_size or chunk_size}"]
            if c.batching == "mixed":
                extra.append("--enable-mixed-chunk")
            lines += _sglang(model_path, c.instance, s, mem_fraction, extra, slots.instances)
            workers.append(url(s))
        elif c.kind == "semi-pd":
            s = slots.take(c.instance.devices)
            node, gpu, index = s[0]
            lines.append(f"node{node}: semipd serve --mode semi-pd --device cuda --model {model_path} "
                         f"--split {split[0]},{split[1]} --tp-size {c.instance.tp} --base-gpu-id {gpu} "
                         f"--host 0.0.0.0 --port {PORT + index} --mem-fraction-static {mem_fraction}")
            name, _, path = policy.partition(":")
            write = ""
            if params and not path:  # parameters the planner set: into a file `semipd tune` reads
                path = f"{name}-params.json"
                write = f"echo '{json.dumps(params)}' > {path} && "
            lines.append(f"node{node}: {write}semipd tune --engine {url(s)} --policy {name}"
                         f"{f' --params {path}' if path else ''} --ttft-slo {ttft_slo_s:g} "
                         f"--tpot-slo {tpot_slo_s:g} --host 0.0.0.0 --port {TUNER_PORT + index}")
            workers.append(url(s))
        else:
            for role, par, count, out in (("prefill", c.instance, c.prefill_count, prefills),
                                          ("decode", c.decode, c.decode_count, decodes)):
                for _ in range(count):
                    s = slots.take(par.devices)
                    extra = [f"--disaggregation-mode {role}", f"--disaggregation-transfer-backend {transfer_backend}"]
                    if role == "prefill":
                        extra.append(f"--disaggregation-bootstrap-port {BOOTSTRAP_PORT + s[0][2]}")
                    lines += _sglang(model_path, par, s, mem_fraction, extra, slots.instances)
                    out.append(f"{url(s)} {BOOTSTRAP_PORT + s[0][2]}" if role == "prefill" else url(s))
    if c.kind == "disagg":
        lines.append("router: python -m sglang_router.launch_router --pd-disaggregation "
                     + " ".join(f"--prefill {p}" for p in prefills) + " "
                     + " ".join(f"--decode {d}" for d in decodes) + f" --host 0.0.0.0 --port {ROUTER_PORT}")
    elif len(workers) > 1:
        lines.append("router: python -m sglang_router.launch_router --worker-urls " + " ".join(workers)
                     + f" --host 0.0.0.0 --port {ROUTER_PORT}")
    return lines
