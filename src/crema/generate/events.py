"""Event generation: one RNG *block* at a time, assembled into NanoAOD branches.

Randomness is organised in fixed blocks of ``BLOCK_SIZE`` events: block ``b`` of
process ``p`` with seed ``s`` uses its own generator seeded from
``SeedSequence(s, spawn_key=(crc32(p), b))``.  Whatever way the events are later
grouped into chunks (or returned in one piece), the content of every event is
therefore the same, which makes files independent of ``chunk_size``.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import awkward as ak
import numpy as np

from . import eft as _eft
from . import pfnano as _pfnano
from . import theory as _theory
from .enrich import MIN_EFFICIENCY, Enrichment, hard_quantities
from .genjets import build_inputs, cluster
from .processes import PROCESS_SPECS, generate_hard
from .reco_event import met_filters, missing_et, pileup
from .reco_jets import GENJET_PT_MIN, GENJETAK8_PT_MIN, attach_leptons, gen_collection, reco_ak4, reco_ak8
from .reco_leptons import reco_leptons
from .schema import COLLECTIONS, COUNTER_TYPE, EMPTY_COLLECTIONS, SCALARS, WEIGHT_ARRAY_TYPE, collections
from .trigger import triggers

BLOCK_SIZE = 10_000  # events per independent RNG block
MAX_ATTEMPTED = 200_000  # hard events attempted at most in one block of a filtered sample (~0.3 GB)
EVENTS_PER_LUMI = 1000
MIN_X_MASS = 260.0  # X -> HH needs m_X > 2 m_H (plus room for the H line shape)

PROCESSES: dict[str, str] = {name: spec.description for name, spec in PROCESS_SPECS.items()}


@dataclass
class Block:
    """Generated events: event-level arrays and collections as (counts, flat fields)."""

    scalars: dict[str, np.ndarray]
    collections: dict[str, tuple[np.ndarray, dict[str, np.ndarray]]] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)  # fixed-width per-event vectors (events, width)
    # events attempted before a generator filter/bias: (count, sum of nominal weights, sum of squares)
    generated: np.ndarray | None = None

    @property
    def n(self) -> int:
        return next(iter(self.scalars.values())).size

    @staticmethod
    def concatenate(blocks: list[Block]) -> Block:
        """Join blocks event-wise."""
        if len(blocks) == 1:
            return blocks[0]
        scalars = {k: np.concatenate([b.scalars[k] for b in blocks]) for k in blocks[0].scalars}
        colls = {}
        for name in blocks[0].collections:
            counts = np.concatenate([b.collections[name][0] for b in blocks])
            fields = {k: np.concatenate([b.collections[name][1][k] for b in blocks]) for k in blocks[0].collections[name][1]}
            colls[name] = (counts, fields)
        arrays = {k: np.concatenate([b.arrays[k] for b in blocks]) for k in blocks[0].arrays}
        generated = None if blocks[0].generated is None else np.sum([b.generated for b in blocks], axis=0)
        return Block(scalars, colls, arrays, generated)


def check_process(process: str, mass: float = 800.0) -> None:
    """Raise ValueError for an unknown process name (or an X mass below the HH threshold)."""
    if process not in PROCESS_SPECS:
        raise ValueError(f"unknown process {process!r}; known processes: {', '.join(PROCESS_SPECS)}")
    if PROCESS_SPECS[process].uses_mass and not mass > MIN_X_MASS:
        raise ValueError(f"X mass must be above {MIN_X_MASS} GeV for {process}, got {mass}")


def block_rng(seed: int, process: str, block: int, stream: int = 0) -> np.random.Generator:
    """Independent generator of one block (``stream`` 1: the PFNano constituents)."""
    key = (zlib.crc32(process.encode()), int(block), *((int(stream),) if stream else ()))
    ss = np.random.SeedSequence(entropy=int(seed) % 2**63, spawn_key=key)
    return np.random.Generator(np.random.PCG64(ss))


def generate_block(process: str, n: int, *, seed: int, block: int, mass: float, pfnano: bool = False,
                   theory_weights: bool = True, data: bool = False, enrich: Enrichment | None = None,
                   max_keep: int | None = None, first: int | None = None) -> Block:
    """Generate events [first, first + n) of a process (``first``: ``block * BLOCK_SIZE`` by default).

    With ``pfnano`` the PFNano tables are added from their own random stream, so
    that every other branch is the same as without. ``theory_weights``: write
    ``LHEScaleWeight``, ``LHEPdfWeight`` and ``PSWeight`` (no random numbers drawn).
    ``data``: collision-data-like (:func:`crema.generate.data.as_data`, from a third random stream).
    ``enrich`` (:mod:`crema.generate.enrich`): the ``n`` hard events are attempted and only those
    passing the filter/bias are simulated further, at most ``max_keep`` of them (the attempted
    events then end with the last kept one); ``Block.generated`` counts the attempted events.
    """
    spec = PROCESS_SPECS[process]
    rng = block_rng(seed, process, block)
    first = block * BLOCK_SIZE if first is None else first

    hard = generate_hard(spec, rng, n, mass, isr_mean=enrich.isr_mean if enrich else None)
    index = np.arange(first, first + n, dtype=np.uint64)
    weight = generated = None
    if enrich:
        negative = spec.negative_fraction if enrich.negative_weights else 0.0
        base = np.where(rng.uniform(size=n) < negative, -1.0, 1.0)
        if hard.isr_weight is not None:
            base = base * hard.isr_weight
        kept, factor = enrich.keep(hard_quantities(hard), rng.uniform(size=n))
        idx = np.flatnonzero(kept)
        attempted = n
        if max_keep is not None and idx.size > max_keep:
            idx = idx[:max_keep]
            attempted = int(idx[-1]) + 1 if max_keep > 0 else 0
        nominal = spec.weight * base[:attempted]
        generated = np.array([attempted, nominal.sum(), np.square(nominal).sum()])
        hard = hard.take(idx)
        weight = spec.weight * base[idx] * factor[idx]
        index = index[idx]
        n = idx.size
    pu = pileup(rng, n)
    inp = build_inputs(rng, hard)
    cl4 = cluster(inp, 0.4, inp.pt4, inp.m4)
    cl8 = cluster(inp, 0.8, inp.pt8, inp.m8)

    gen_counts, gen_fields, gen_index = hard.rec.finalize()
    gj_index, gj_counts, gj_fields = gen_collection(cl4, GENJET_PT_MIN, "GenJet")
    g8_index, g8_counts, g8_fields = gen_collection(cl8, GENJETAK8_PT_MIN, "GenJetAK8")

    ak4 = reco_ak4(rng, cl4, gj_index, pu, enrich.tag_bias if enrich else None)
    if ak4.tag_weight is not None:
        weight = weight * ak4.tag_weight
    K = cl4.valid.shape[1]
    lep = reco_leptons(rng, hard, inp, cl4, ak4.new_index[:, :K], ak4.fields["pt"], ak4.counts, gen_index, pu)
    attach_leptons(ak4, n, "e", lep.e_counts, lep.e_fields["jetIdx"])
    attach_leptons(ak4, n, "mu", lep.mu_counts, lep.mu_fields["jetIdx"])
    ak8 = reco_ak8(rng, hard, inp, cl8, g8_index)

    # truth MET: every neutrino in the record (prompt and from hadron decays)
    nu_px = np.zeros(n)
    nu_py = np.zeros(n)
    for s in hard.rec.slots:
        is_nu = s.present & np.isin(np.abs(s.pdg), (12, 14, 16))
        nu_px += np.where(is_nu, s.p4.px, 0.0)
        nu_py += np.where(is_nu, s.p4.py, 0.0)
    met = missing_et(
        rng, nu_px, nu_py, ak4.mis_px + lep.mis_px, ak4.mis_py + lep.mis_py, ak4.sum_pt + lep.sum_pt, ak4.var_pt, pu
    )

    if weight is None:
        weight = np.where(rng.uniform(size=n) < spec.negative_fraction, -spec.weight, spec.weight)
    scalars: dict[str, np.ndarray] = {
        "run": np.ones(n),
        "luminosityBlock": 1 + index // EVENTS_PER_LUMI,
        # unique within a file, distinct across seeds
        "event": np.uint64((int(seed) * 1_000_000_000 + 1) % 2**64) + index,
        "genWeight": weight,
        "Generator_weight": weight,
        "LHEWeight_originalXWGTUP": weight,
        **met,
        **pu.branches,
        **met_filters(rng, n),
        **triggers(rng, n, lep.e_counts, lep.e_fields, lep.mu_counts, lep.mu_fields),
    }
    empty = np.zeros(n, dtype=np.int64)
    colls = {
        "GenPart": (gen_counts, gen_fields),
        "GenJet": (gj_counts, {k.split("_", 1)[1]: v for k, v in gj_fields.items()}),
        "GenJetAK8": (g8_counts, {k.split("_", 1)[1]: v for k, v in g8_fields.items()}),
        "Jet": (ak4.counts, ak4.fields),
        "FatJet": (ak8.counts, ak8.fields),
        "SubJet": (ak8.sub_counts, ak8.sub_fields),
        "Electron": (lep.e_counts, lep.e_fields),
        "Muon": (lep.mu_counts, lep.mu_fields),
        **{c: (empty, {k: np.zeros(0) for k in COLLECTIONS[c]}) for c in EMPTY_COLLECTIONS},
    }
    if pfnano:
        pf_rng = block_rng(seed, process, block, stream=1)
        colls.update(_pfnano.build(pf_rng, ak4.counts, ak4.fields, ak4.extra, pu.branches))
    arrays = _theory_branches(spec, hard) if theory_weights else {}
    if hard.parton is not None:  # EFT: weights at the reweight points relative to the nominal
        arrays["LHEReweightingWeight"] = _eft.reweight_weights(hard.parton).astype(np.float32)
    typed = _typed(Block(scalars, colls, arrays, generated), pfnano)
    if data:
        from .data import as_data

        return as_data(typed, block_rng(seed, process, block, stream=2), seed, first, process)
    return typed


def _theory_branches(spec, hard) -> dict[str, np.ndarray]:
    """The theory weight vectors from the event's truth (crema.generate.theory)."""
    n = hard.rec.n
    n_isr = sum(hard.rec[s].present.astype(np.int64) for s in hard.isr) if hard.isr else np.zeros(n, np.int64)
    quarks = [np.where(hard.rec[s].present & np.isin(np.abs(hard.rec[s].pdg), (1, 2, 3, 4, 5)), hard.rec[s].p4.pt, 0.0)
              for s in hard.finals]
    quark_pt = np.stack(quarks, axis=1) if quarks else np.zeros((n, 0))
    args = (spec.isr_mean, n_isr - spec.isr_min, hard.rec[0].p4.e, hard.rec[1].p4.e, quark_pt)
    if spec.incoming != "eft":
        return _theory.theory_weights(spec.incoming, *args)
    # EFT ttbar: the initial state is chosen per event, so each event takes its own state's model
    gg, qq = _theory.theory_weights("gg", *args), _theory.theory_weights("qq", *args)
    is_qq = np.asarray(hard.parton["is_qq"], dtype=bool)[:, None]
    return {k: np.where(is_qq, qq[k], gg[k]) for k in gg}


def _typed(block: Block, pfnano: bool = False) -> Block:
    """Cast every array to its NanoAOD type and keep exactly the schema's branches."""
    scalars = {k: np.asarray(block.scalars[k]).astype(t, copy=False) for k, t in SCALARS.items()}
    colls = {}
    for name, types in collections(pfnano).items():
        counts, fields = block.collections[name]
        colls[name] = (counts.astype(COUNTER_TYPE), {k: np.asarray(fields[k]).astype(t, copy=False) for k, t in types.items()})
    arrays = {k: np.asarray(v).astype(WEIGHT_ARRAY_TYPE, copy=False) for k, v in block.arrays.items()}
    return Block(scalars, colls, arrays, block.generated)


def generate_blocks(
    process: str,
    n_events: int,
    *,
    seed: int,
    mass: float,
    start_block: int = 0,
    n_blocks: int | None = None,
    pfnano: bool = False,
    theory_weights: bool = True,
    data: bool = False,
    enrich: Enrichment | None = None,
):
    """Yield the blocks covering ``n_events`` (optionally a sub-range of blocks).

    With ``enrich``, ``n_events`` is the number of events *kept*: blocks of ``BLOCK_SIZE``
    attempted events follow one another until that many passed (``start_block``/``n_blocks``
    are not used); a ValueError is raised when fewer than ``MIN_EFFICIENCY`` of them pass.
    """
    if enrich:
        yield from _enriched_blocks(process, n_events, seed=seed, mass=mass, pfnano=pfnano,
                                    theory_weights=theory_weights, enrich=enrich)
        return
    total = -(-n_events // BLOCK_SIZE)
    stop = total if n_blocks is None else min(total, start_block + n_blocks)
    for b in range(start_block, stop):
        yield generate_block(process, min(BLOCK_SIZE, n_events - b * BLOCK_SIZE), seed=seed, block=b, mass=mass,
                             pfnano=pfnano, theory_weights=theory_weights, data=data)


def _enriched_blocks(process: str, n_events: int, *, seed: int, mass: float, pfnano: bool, theory_weights: bool,
                     enrich: Enrichment):
    kept = attempted = 0
    block = 0
    size = BLOCK_SIZE
    while kept < n_events:
        # nothing kept after 10 / MIN_EFFICIENCY attempts: the efficiency is below MIN_EFFICIENCY (chance e^-10
        # otherwise), whatever n_events asks for; some kept: stop once the average falls below it
        if attempted >= (10 if kept == 0 else max(n_events, 1)) / MIN_EFFICIENCY:
            raise ValueError(f"generator filter/bias of {process}: {kept} of {attempted} attempted events passed "
                             f"(efficiency below {MIN_EFFICIENCY:g}); loosen the filter")
        out = generate_block(process, size, seed=seed, block=block, mass=mass, pfnano=pfnano,
                             theory_weights=theory_weights, enrich=enrich, max_keep=n_events - kept, first=attempted)
        kept += out.n
        attempted += int(out.generated[0])
        block += 1
        # a filter keeping few events (a slice of a process) attempts more hard events per block, aiming at
        # BLOCK_SIZE kept ones: the detector simulation's cost per block would otherwise dominate
        if kept:
            size = int(min(MAX_ATTEMPTED, max(BLOCK_SIZE, BLOCK_SIZE * attempted / kept)))
        yield out  # also when nothing passed: its attempted events count in the normalisation


def _jagged(counts: np.ndarray, content) -> ak.Array:
    offsets = np.zeros(counts.size + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return ak.Array(ak.contents.ListOffsetArray(ak.index.Index64(offsets), content))


def block_to_branches(block: Block) -> dict[str, ak.Array | np.ndarray]:
    """Flat branch-name view: event-level numpy arrays, jagged awkward arrays, ``n<Coll>`` counters."""
    out: dict[str, ak.Array | np.ndarray] = dict(block.scalars)
    for name, (counts, fields) in block.collections.items():
        out[f"n{name}"] = counts
        for k, v in fields.items():
            out[f"{name}_{k}"] = _jagged(counts, ak.contents.NumpyArray(v))
    for name, values in block.arrays.items():
        counts = np.full(len(values), values.shape[1], dtype=COUNTER_TYPE)
        out[f"n{name}"] = counts
        out[name] = _jagged(counts, ak.contents.NumpyArray(values.reshape(-1)))
    return out


def block_to_records(block: Block) -> dict[str, ak.Array | np.ndarray]:
    """uproot ``extend`` view: one jagged record array per collection (counters are implicit)."""
    out: dict[str, ak.Array | np.ndarray] = dict(block.scalars)
    for name, (counts, fields) in block.collections.items():
        record = ak.contents.RecordArray([ak.contents.NumpyArray(v) for v in fields.values()], list(fields), length=int(counts.sum()))
        out[name] = _jagged(counts, record)
    for name, values in block.arrays.items():
        out[name] = _jagged(np.full(len(values), values.shape[1]), ak.contents.NumpyArray(values.reshape(-1)))
    return out


def generate_events(
    process: str, n_events: int, *, seed: int = 0, mass: float = 800.0, pfnano: bool = False,
    theory_weights: bool = True,
) -> dict[str, ak.Array | np.ndarray]:
    """Generate ``n_events`` NanoAODv12-like events of ``process`` in memory.

    Returns branch name -> array exactly as :func:`write_nanoaod` writes them: flat
    numpy arrays for event-level branches and the ``n<Collection>`` counters,
    jagged awkward arrays for collection fields.  ``mass`` is the X mass of the
    resonant ``hh_*`` processes (GeV) and ignored otherwise.  ``pfnano`` adds the
    PFNano tables ``PFCands``, ``JetPFCands``, ``SV`` and ``JetSVs`` (the AK4 jets'
    constituents and secondary vertices) without changing any other branch;
    ``theory_weights`` the ``LHEScaleWeight``, ``LHEPdfWeight`` and ``PSWeight`` vectors.
    """
    check_process(process, mass)
    if n_events < 0:
        raise ValueError("n_events must be >= 0")
    if n_events == 0:
        return block_to_branches(generate_block(process, 0, seed=seed, block=0, mass=mass, pfnano=pfnano,
                                                theory_weights=theory_weights))
    return block_to_branches(Block.concatenate(list(generate_blocks(process, n_events, seed=seed, mass=mass, pfnano=pfnano,
                                                                    theory_weights=theory_weights))))
