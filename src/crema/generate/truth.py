"""Generator-truth record (NanoAOD ``GenPart``) built slot by slot.

Each process has a fixed decay topology, so its truth record is a fixed list of
*slots* (incoming partons, resonances, decay products, ISR partons, hadrons from
heavy-flavour fragmentation, their semileptonic decay products).  A slot holds one
particle per event; optional particles (the 3rd ISR parton, a semileptonic B decay,
...) are switched off per event with a ``present`` mask.  :meth:`GenRecord.finalize`
compacts the present slots into the jagged NanoAOD layout and translates mother
slots into per-event ``genPartIdxMother`` indices.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .kinematics import P4

# NanoAOD GenPart_statusFlags bits (PhysicsTools/NanoAOD genparticles_cff)
IS_PROMPT = 1 << 0
IS_DECAYED_LEPTON_HADRON = 1 << 1
IS_DIRECT_HADRON_DECAY_PRODUCT = 1 << 6
IS_HARD_PROCESS = 1 << 7
FROM_HARD_PROCESS = 1 << 8
FROM_HARD_PROCESS_BEFORE_FSR = 1 << 11
IS_FIRST_COPY = 1 << 12
IS_LAST_COPY = 1 << 13
IS_LAST_COPY_BEFORE_FSR = 1 << 14

# Flag sets used by the generator (each particle is stored once, so it is both
# the first and the last copy).
FLAGS_INCOMING = IS_PROMPT | IS_HARD_PROCESS | FROM_HARD_PROCESS | FROM_HARD_PROCESS_BEFORE_FSR
FLAGS_HARD = (
    IS_PROMPT
    | IS_HARD_PROCESS
    | FROM_HARD_PROCESS
    | FROM_HARD_PROCESS_BEFORE_FSR
    | IS_FIRST_COPY
    | IS_LAST_COPY
    | IS_LAST_COPY_BEFORE_FSR
)
FLAGS_ISR = IS_PROMPT | IS_FIRST_COPY | IS_LAST_COPY
FLAGS_HADRON = IS_PROMPT | IS_DECAYED_LEPTON_HADRON | IS_FIRST_COPY | IS_LAST_COPY
FLAGS_HADRON_DECAY = IS_DIRECT_HADRON_DECAY_PRODUCT | IS_FIRST_COPY | IS_LAST_COPY

# Pythia-style status codes
STATUS_INCOMING = 21
STATUS_RESONANCE = 22
STATUS_OUTGOING = 23
STATUS_ISR = 43
STATUS_DECAYED = 2
STATUS_FINAL = 1


@dataclass
class Slot:
    """One particle position of the truth record (per-event arrays)."""

    pdg: np.ndarray
    status: np.ndarray
    flags: np.ndarray
    mother: int
    p4: P4
    present: np.ndarray
    mass: np.ndarray | None = None


@dataclass
class GenRecord:
    """Growing list of slots for a block of ``n`` events."""

    n: int
    slots: list[Slot] = field(default_factory=list)

    def add(self, pdg, status, flags, mother: int = -1, p4: P4 | None = None, present=True, mass=None) -> int:
        """Append a slot and return its slot number (scalars broadcast to all events).

        ``mass`` is the generated mass to store; None means "compute from the p4"
        (only for particles whose p4 is not the product of an exact decay).
        """
        n = self.n
        self.slots.append(
            Slot(
                pdg=np.broadcast_to(np.asarray(pdg, dtype=np.int32), (n,)).copy(),
                status=np.broadcast_to(np.asarray(status, dtype=np.int32), (n,)).copy(),
                flags=np.broadcast_to(np.asarray(flags, dtype=np.int64), (n,)).copy(),
                mother=mother,
                p4=p4 if p4 is not None else P4.zeros(n),
                present=np.broadcast_to(np.asarray(present, dtype=bool), (n,)).copy(),
                mass=None if mass is None else np.broadcast_to(np.asarray(mass, dtype=np.float64), (n,)),
            )
        )
        return len(self.slots) - 1

    def __getitem__(self, i: int) -> Slot:
        return self.slots[i]

    def boost_slots(self, slot_ids, parent: P4) -> None:
        """Boost the p4 of the given slots from ``parent``'s rest frame to the lab."""
        for i in slot_ids:
            self.slots[i].p4 = self.slots[i].p4.boost_from_rest_of(parent)

    def index_map(self) -> np.ndarray:
        """(n, n_slots) GenPart index of every slot in every event, -1 where absent."""
        present = np.stack([s.present for s in self.slots], axis=1)
        idx = np.cumsum(present, axis=1) - 1
        return np.where(present, idx, -1)

    def finalize(self) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
        """Compact into NanoAOD GenPart: (counts, flat fields, slot -> index map)."""
        present = np.stack([s.present for s in self.slots], axis=1)
        idx = self.index_map()
        mothers = np.stack(
            [idx[:, s.mother] if s.mother >= 0 else np.full(self.n, -1) for s in self.slots], axis=1
        )

        def flat(values) -> np.ndarray:
            return np.stack(values, axis=1)[present]

        pt = flat([s.p4.pt for s in self.slots])
        eta = flat([s.p4.eta for s in self.slots])
        phi = flat([s.p4.phi for s in self.slots])
        # Stored masses are the generated ones (quarks other than top, leptons and
        # gluons are generated massless, as NanoAOD stores them).
        mass = flat([s.p4.mass if s.mass is None else s.mass for s in self.slots])
        fields = {
            "pt": pt,
            "eta": eta,
            "phi": phi,
            "mass": mass,
            "pdgId": flat([s.pdg for s in self.slots]),
            "status": flat([s.status for s in self.slots]),
            "statusFlags": flat([s.flags for s in self.slots]),
            "genPartIdxMother": mothers[present],
        }
        return present.sum(axis=1), fields, idx
