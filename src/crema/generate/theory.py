"""Theory weight branches of generated events: ``LHEScaleWeight``, ``LHEPdfWeight``, ``PSWeight``.

Each is a ratio ``w_var / w_nominal`` per event in NanoAOD's order (crema.corrections.theory), and a
deterministic function of the event's truth (initial-state momentum fractions, ISR partons, hard
final-state quarks): no random numbers are drawn, so every other branch is the same with or
without them. The physics model is in docs/generator.md ("Theory weights").
"""

from __future__ import annotations

import numpy as np

SQRT_S = 13600.0
N_PDF = 100  # Hessian eigenvector members (NNPDF3.1 mc_hessian_pdfas, LHAID 325300: 1 + 100 + 2)

# muR x2 changes the rate by exp(-A_R (1 + R_PER_ISR n_isr)): the Born alpha_s powers plus one per emission
SCALE_R = {"gg": 0.07, "qq": 0.02, "qq'": 0.025}
R_PER_ISR = 0.25
# muF x2 moves gluons from large to small x: exp(-A_F tanh(ln(x / X_PIVOT)))
SCALE_F = {"gg": 0.03, "qq": 0.015, "qq'": 0.015}
X_PIVOT = 0.05
# PDF: total Hessian uncertainty P0 + P1 x (grows at large x), alpha_s members +-AS
PDF = {"gg": (0.015, 0.30, 0.02), "qq": (0.010, 0.10, 0.005), "qq'": (0.010, 0.10, 0.005)}
# parton shower: ISR emission rate x (1 +- ISR_RATE); FSR: (1 +- FSR_SLOPE tanh(ln(pT_q / FSR_PIVOT))) per quark
ISR_RATE = 0.15
FSR_SLOPE = 0.05
FSR_PIVOT = 60.0


def theory_weights(incoming: str, isr_mean: float, n_isr: np.ndarray, e1: np.ndarray, e2: np.ndarray,
                   quark_pt: np.ndarray) -> dict[str, np.ndarray]:
    """The three branches as (events, width) float arrays.

    ``incoming``: ``gg``, ``qq`` or ``qq'``; ``isr_mean``: the mean number of Poisson ISR partons;
    ``n_isr``: Poisson ISR partons per event; ``e1``, ``e2``: incoming parton energies (GeV);
    ``quark_pt``: (events, k) pT of the hard final-state quarks (0 where absent).
    """
    n = len(n_isr)
    x = np.sqrt(np.clip(4 * e1 * e2, 0.0, None)) / SQRT_S  # sqrt(x1 x2)
    log_kr = np.array([-1, -1, -1, 0, 0, 0, 1, 1, 1])  # NanoAOD order: muR slowest, muF fastest
    log_kf = np.array([-1, 0, 1, -1, 0, 1, -1, 0, 1])
    a_r = SCALE_R[incoming] * (1 + R_PER_ISR * n_isr)
    a_f = SCALE_F[incoming] * np.tanh(np.log(np.clip(x, 1e-6, None) / X_PIVOT))
    scale = np.exp(-np.outer(a_r, log_kr) - np.outer(a_f, log_kf))

    p0, p1, alpha_s = PDF[incoming]
    sigma = p0 + p1 * x
    k = np.arange(1, N_PDF + 1)
    # unit-norm eigenvector directions over the members (sum_k c_k^2 ~ 1), turning with ln x
    c = np.sqrt(2.0 / N_PDF) * np.cos(np.outer(np.log(np.clip(x, 1e-6, None)) + 7.0, 0.37 * k) + 0.1 * k**2)
    pdf = np.empty((n, N_PDF + 3))
    pdf[:, 0] = 1.0
    pdf[:, 1:N_PDF + 1] = 1.0 + sigma[:, None] * c
    pdf[:, N_PDF + 1] = 1.0 - alpha_s
    pdf[:, N_PDF + 2] = 1.0 + alpha_s

    def isr(eps: float) -> np.ndarray:  # Poisson rate lambda -> lambda (1 + eps), mean weight 1
        return (1 + eps) ** n_isr * np.exp(-isr_mean * eps)

    g = np.where(quark_pt > 0, np.tanh(np.log(np.clip(quark_pt, 1e-3, None) / FSR_PIVOT)), 0.0)
    fsr_up, fsr_down = np.prod(1 + FSR_SLOPE * g, axis=1), np.prod(1 - FSR_SLOPE * g, axis=1)
    ones = np.ones(n)
    ps = np.stack([isr(ISR_RATE), fsr_up if quark_pt.size else ones, isr(-ISR_RATE),
                   fsr_down if quark_pt.size else ones], axis=1)
    return {"LHEScaleWeight": scale, "LHEPdfWeight": pdf, "PSWeight": ps}
