"""Placement candidates for the planner (`semipd plan`): what can run on N devices, and in what order.

Pure: dataclasses and rules, no simulation. planner/evaluate.py gives each candidate a goodput.
Kinds (the DistServe question, arXiv 2401.09670, with semi-PD added):
- colocated: replicas of one instance running both phases (stock SGLang), TP x PP devices each;
- disagg: replicas of a unit of `prefill_count` prefill and `decode_count` decode instances, each
  with its own TP x PP; the KV cache goes from prefill to decode over NVLink when the unit sits in
  one node, otherwise over the inter-node link (DistServe's high node-affinity case) or, when the
  unit's pipelines can be cut at node boundaries with each stage's prefill and decode segments in
  one node, over NVLink with only activations crossing nodes (its low node-affinity case);
- semi-pd: replicas of one semi-PD instance (TP only: one KV pool, the split per device).
Feasibility follows DistServe's search (simdistserve/benchmarks/search_configs.py): TP divides the
attention heads, PP the layers; plus memory (weights + a KV cache that holds the longest request)
and TP inside a node (tensor-parallel all-reduces need NVLink).
"""

from __future__ import annotations

from dataclasses import dataclass

from simulator.hardware_profiles import Hardware, Model
from simulator.perf_model import Roofline

DEVICES_PER_NODE = 8   # an 8-GPU node (DGX/HGX A100, H100, H200), as DistServe's testbed
MIN_KV_TOKENS = 4096   # the simulator's check_fits floor: a KV cache smaller than this is useless
KINDS = ("colocated", "disagg", "semi-pd")


@dataclass(frozen=True, order=True)
class Parallel:
    """One instance's parallelism: `pp` pipeline stages, each `tp` devices wide."""

    tp: int = 1
    pp: int = 1

    @property
    def devices(self) -> int:
        return self.tp * self.pp

    @property
    def label(self) -> str:
        return f"TP{self.tp}" + (f"PP{self.pp}" if self.pp > 1 else "")


@dataclass(frozen=True)
class Candidate:
    """A deployment unit; a plan replicates it over the devices. Hashable: the evaluation cache key."""

    kind: str                       # colocated | disagg | semi-pd
    instance: Parallel              # colocated / semi-pd instance, or disagg's prefill instance
    decode: Parallel | None = None  # disagg: the decode instance
    prefill_count: int = 1          # disagg: prefill instances per unit
    decode_count: int = 0           # disagg: decode instances per unit
    batching: str = ""              # colocated: prefill-first (SGLang's default) | mixed (chunked)
    chunk_size: int = 0             # colocated mixed: prefill tokens per step; 0 = the profile's
    kv_link: str = ""               # disagg: nvlink | inter-node
    affinity: str = ""              # disagg spanning nodes: low (stages per node) | high

    @property
    def devices(self) -> int:
        """Devices of one unit."""
        if self.kind == "disagg":
            return self.prefill_count * self.instance.devices + self.decode_count * self.decode.devices
        return self.instance.devices

    @property
    def label(self) -> str:
        if self.kind == "disagg":
            link = f"KV over {'NVLink' if self.kv_link == 'nvlink' else 'the inter-node link'}"
            if self.affinity:
                link += f", {self.affinity} node-affinity"
            return (f"{self.prefill_count}P {self.instance.label} + {self.decode_count}D "
                    f"{self.decode.label} ({link})")
        if self.kind == "colocated":
            how = "chunked prefill mixed with decode" if self.batching == "mixed" else "prefill-first"
            return f"{self.instance.label} ({how}{f', chunk {self.chunk_size}' if self.chunk_size else ''})"
        return f"{self.instance.label} (semi-PD)"


@dataclass(frozen=True)
class Plan:
    """A candidate with its simulated goodput, replicated `replicas` times."""

    candidate: Candidate
    unit_goodput: float  # req/s one unit serves at the attainment target
    replicas: int

    @property
    def devices(self) -> int:
        return self.replicas * self.candidate.devices

    @property
    def goodput(self) -> float:
        return self.replicas * self.unit_goodput

    @property
    def per_device(self) -> float:
        return self.goodput / self.devices if self.devices else 0.0


# -- feasibility ----------------------------------------------------------------------------------
def weight_bytes_per_device(model: Model, par: Parallel) -> float:
    return model.params * model.bytes_per_param / par.devices


def kv_capacity(hardware: Hardware, model: Model, par: Parallel, **options) -> int:
    """KV tokens one instance holds (the simulator's own formula)."""
    return Roofline(hardware, model, par.tp, pp=par.pp, **options).kv_capacity


def problems(hardware: Hardware, model: Model, par: Parallel, devices: int, longest_request: int = 0,
             devices_per_node: int = DEVICES_PER_NODE, **options) -> list[str]:
    """Why `par` cannot serve `model` on `devices` devices of `hardware` (empty: feasible)."""
    out = []
    if par.tp < 1 or par.pp < 1:
        return [f"{par.label}: TP and PP must be at least 1"]
    if model.heads % par.tp:
        out.append(f"{par.label}: TP {par.tp} does not divide {model.name}'s {model.heads} attention heads")
    elif model.kv_heads % par.tp and par.tp % model.kv_heads:
        # fewer KV heads than ranks works by replicating them (SGLang does), but not a ragged split
        out.append(f"{par.label}: TP {par.tp} neither divides nor is a multiple of {model.name}'s "
                   f"{model.kv_heads} KV heads")
    if model.layers % par.pp:
        out.append(f"{par.label}: PP {par.pp} does not divide {model.name}'s {model.layers} layers")
    if par.tp > devices_per_node:
        out.append(f"{par.label}: TP {par.tp} spans more than one {devices_per_node}-device node "
                   "(all-reduces need NVLink)")
    if par.devices > devices:
        out.append(f"{par.label}: needs {par.devices} devices, {devices} available")
    roof = Roofline(hardware, model, par.tp, pp=par.pp, **options)
    need = max(MIN_KV_TOKENS, longest_request)
    if roof.kv_capacity < need:
        weights = weight_bytes_per_device(model, par)
        usable = hardware.memory_bytes * roof.mem_fraction - roof.activation_bytes
        out.append(f"{par.label}: memory: weights take {weights / 1e9:.1f} GB per device of the "
                   f"{usable / 1e9:.1f} GB usable ({roof.mem_fraction:.0%} of {hardware.memory_bytes / 1e9:.0f} GB "
                   f"less {roof.activation_bytes / 1e9:.0f} GB for activations), leaving a KV cache of "
                   f"{roof.kv_capacity} tokens; {need} needed")
    return out


def instance_options(hardware: Hardware, model: Model, devices: int, longest_request: int = 0,
                     devices_per_node: int = DEVICES_PER_NODE, **options) -> tuple[list[Parallel], dict]:
    """Every (TP, PP) with TP x PP <= devices: (the feasible ones, {infeasible: [reasons]})."""
    feasible, rejected = [], {}
    for tp in range(1, min(devices, devices_per_node) + 1):
        for pp in range(1, devices // tp + 1):
            par = Parallel(tp, pp)
            why = problems(hardware, model, par, devices, longest_request, devices_per_node, **options)
            if why:
                rejected[par] = why
            else:
                feasible.append(par)
    return feasible, rejected


# -- placing units on nodes -----------------------------------------------------------------------
def replicas(unit_devices: int, devices: int, devices_per_node: int = DEVICES_PER_NODE) -> int:
    """Copies of a unit on `devices` devices: a unit that fits in a node never straddles two (its
    TP all-reduces and KV transfers stay on NVLink); a larger one takes whole nodes' worth."""
    if unit_devices <= 0 or unit_devices > devices:
        return 0
    if unit_devices > devices_per_node:
        return devices // unit_devices
    full, rest = divmod(devices, devices_per_node)
    return full * (devices_per_node // unit_devices) + rest // unit_devices


def nodes_spanned(unit_devices: int, devices_per_node: int = DEVICES_PER_NODE) -> int:
    return -(-unit_devices // devices_per_node)


def low_affinity_fits(prefill: Parallel, decode: Parallel, n_p: int, n_d: int,
                      devices_per_node: int = DEVICES_PER_NODE) -> bool:
    """DistServe's low node-affinity placement (Algorithm 2): the pipelines are cut at node
    boundaries into k segments and node i holds segment i of every prefill and decode instance, so
    the KV of each stage moves inside a node. Needs k to divide both PP degrees and one segment of
    the whole unit to fit in a node."""
    unit = n_p * prefill.devices + n_d * decode.devices
    k = nodes_spanned(unit, devices_per_node)
    if k == 1:
        return True
    return prefill.pp % k == 0 and decode.pp % k == 0 and unit // k <= devices_per_node and unit % k == 0


def disagg_units(prefill: list[Parallel], decode: list[Parallel], devices: int,
                 devices_per_node: int = DEVICES_PER_NODE) -> list[Candidate]:
    """Every unit of n_p prefill and n_d decode instances that fits in `devices`, with its KV link:
    NVLink inside a node; across nodes both DistServe cases where they apply."""
    out = []
    for p in prefill:
        for d in decode:
            for n_p in range(1, devices // p.devices + 1):
                for n_d in range(1, (devices - n_p * p.devices) // d.devices + 1):
                    unit = n_p * p.devices + n_d * d.devices
                    if unit <= devices_per_node:
                        out.append(Candidate("disagg", p, d, n_p, n_d, kv_link="nvlink"))
                        continue
                    if low_affinity_fits(p, d, n_p, n_d, devices_per_node):
                        out.append(Candidate("disagg", p, d, n_p, n_d, kv_link="nvlink", affinity="low"))
                    out.append(Candidate("disagg", p, d, n_p, n_d, kv_link="inter-node", affinity="high"))
    return out


def estimate_disagg(prefill_goodput: float, decode_goodput: float, unit: Candidate,
                    link_rate: float = float("inf")) -> float:
    """DistServe Algorithm 1's replication rule read backwards: a unit serves as much as its slower
    side, n_p x (one prefill instance's goodput) or n_d x (one decode instance's), and no more
    than its prefill instances' KV links carry (`link_rate`: requests/s one link sends)."""
    return min(unit.prefill_count * prefill_goodput, unit.decode_count * decode_goodput,
               unit.prefill_count * link_rate)


# -- ranking --------------------------------------------------------------------------------------
def rank(plans: list[Plan]) -> list[Plan]:
    """Best first: goodput per device (DistServe's objective), then total goodput, then fewer
    devices; a plan serving nothing is dropped."""
    useful = [p for p in plans if p.goodput > 0 and p.replicas > 0]
    return sorted(useful, key=lambda p: (-round(p.per_device, 9), -round(p.goodput, 9), p.devices,
                                         p.candidate.kind, p.candidate.label))
