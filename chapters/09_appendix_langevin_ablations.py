# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Chapter 9: Appendix: Langevin ablations
#
# Chapter 4 chose the E-step's chain: coordinates $(\epsilon, -)$, one step size
# $\gamma_\epsilon = 0.3$ at every noise level, and full noise cancellation. This appendix holds the
# measurements behind those choices that the main line does not need: how stiff the $z$ direction
# is, where each chain leads EM on the linear pair (and why the $(x, z)$ chain's $z$ step biases
# it), the four-way table of coordinates $(x, z)$, $(\epsilon, z)$, $(x, -)$, $(\epsilon, -)$ on a 2D
# mixture, and which $z$ steps stay stable in training, with a trust region that makes the joint
# chain usable. Read it after chapter 4; the notation is chapter 4's ($\eta$, the record of the
# injected noise, is defined in its section 4).
#
# **What you will be able to do**
#
# * bound a stable $z$ step by the curvature of $-\log\rho$ in $z$, and tell a stable step from a
#   fast chain;
# * trace a chain's discretisation bias to the step that causes it, with exact covariances;
# * read the four-way table of coordinates, and say which differences are beyond the seeds' spread;
# * choose a $z$ step for the joint chain, and say what a trust region on it buys.

# %%
import math
import time

import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import display

import emd_lib
from emd_lib import fast_or
from emd_lib.book import glue, table
from emd_lib.book.plotting import use_style
from emd_lib.distill import DistillConfig, Distiller
from emd_lib.em import LinearGenerator, exact_student, gaussian_teacher
from emd_lib.experiments import ch04 as sweeps
from emd_lib.langevin import LangevinConfig
from emd_lib.mixtures import get_mixture, irregular
from emd_lib.schedules import VP

torch.set_num_threads(1)
use_style()
t_start = time.perf_counter()

# the linear-Gaussian pair of chapters 3 and 4: teacher N(m, C), generator g(z) = A z + b, exact student
m, C, A, b = sweeps.linear_pair()
teacher, gen, student = gaussian_teacher(m, C), LinearGenerator(A, b), exact_student(A, b)
lams = [-6.0, -4.0, -2.0, 0.0, 2.0, 4.0, 6.0]
K_chain = fast_or(32, 16)

level = sweeps.level                      # (alpha, sigma) of the VP schedule at log-SNR lam, as floats


# %% [markdown]
# ## 1. How stiff the $z$ direction is
#
# Chapter 4 (section 3) ran chains that move $z$ on the linear pair against $\rho$: a plain $z$ step
# closed the gap at every level, the SNR-preconditioned step $\gamma_z/(1 + \text{SNR})$ hardly moved
# $z$ at high SNR. Here is why, and what changes for a mixture. For each chain we compute, from its
# update (linear on this pair, with the exact student), how many steps its slowest direction needs to
# relax by a factor $e$: a stable chain can still be a slow one.

# %%
def relax_steps(space, lam, gamma_z, gamma_eps=0.3, direction=False):
    """Steps for the slowest direction of the (u, z) chain on the linear pair to shrink by a factor e.

    With the exact student the score gap is linear, ds(x_t) = -D x_t + const with D = P_p - P_q (the
    precisions of p_t and q_t), so one step maps the deviation of (u, z) from its mean by a matrix M;
    the slowest direction shrinks by the largest |eigenvalue| r of M per step: -1 / log r steps.
    direction=True also returns that direction (the eigenvector, unit length) over (u, z).
    """
    a, s = level(lam)
    I = torch.eye(2, dtype=torch.float64)
    Ad, Cd = A.double(), C.double()
    D = torch.linalg.inv(a**2 * Cd + s**2 * I) - torch.linalg.inv(a**2 * Ad @ Ad.T + s**2 * I)
    if space == "x":
        # x <- x + g_x (ds - (x - a A z) / s^2),  z <- z + g_z (a A^T (x - a A z) / s^2 - z), g_x = gamma_eps s^2
        gx = gamma_eps * s**2
        M = torch.cat([torch.cat([I - gx * D - gx / s**2 * I, gx * a / s**2 * Ad], 1),
                       torch.cat([gamma_z * a / s**2 * Ad.T, (1 - gamma_z) * I - gamma_z * a**2 / s**2 * Ad.T @ Ad], 1)])
    else:
        # eps <- eps + g (s ds - eps),  z <- z + g_z (a A^T ds - z),  with x_t = a (A z + b) + s eps
        M = torch.cat([torch.cat([(1 - gamma_eps) * I - gamma_eps * s**2 * D, -gamma_eps * s * a * D @ Ad], 1),
                       torch.cat([-gamma_z * a * s * Ad.T @ D, (1 - gamma_z) * I - gamma_z * a**2 * Ad.T @ D @ Ad], 1)])
    w, V = torch.linalg.eig(M)
    i = int(w.abs().argmax())
    steps = -1 / math.log(float(w[i].abs()))
    return (steps, V[:, i].real / V[:, i].real.norm()) if direction else steps


snr_of = {lam: level(lam)[0] ** 2 / level(lam)[1] ** 2 for lam in lams}
relax = {"(eps, z), gamma_z = 0.3, no preconditioning": [relax_steps("eps", l, 0.3) for l in lams],
         "(eps, z), gamma_z = 0.3 / (1 + SNR)": [relax_steps("eps", l, 0.3 / (1 + snr_of[l])) for l in lams],
         "(x, z), gamma_x = 0.3 sigma^2, gamma_z = 0.3 / (1 + SNR)": [relax_steps("x", l, 0.3 / (1 + snr_of[l]))
                                                                     for l in lams]}
lam_cols = [f"λ = {l:+.0f}" for l in lams]
display(table([[name] + row for name, row in relax.items()], ["chain"] + lam_cols, fmt="{:,.0f}",
              title="steps for the slowest direction to relax by a factor e (the chains of chapter 4, section 3)"))
relax_xz = relax["(x, z), gamma_x = 0.3 sigma^2, gamma_z = 0.3 / (1 + SNR)"]
per_snr = [v / snr_of[l] for l, v in zip(lams, relax_xz) if l >= 2]       # relaxation steps / SNR at lam >= 2
i4, hi = lams.index(4.0), lams.index(6.0)
# the slow direction at lam = +6: x_t and z move together, keeping the residual x_t - alpha A z near zero
_, v_slow = relax_steps("x", 6.0, 0.3 / (1 + snr_of[6.0]), direction=True)
res_slow = float((v_slow[:2] - level(6.0)[0] * A.double() @ v_slow[2:]).norm())
glue("ch09_res_slow", res_slow, fmt=".4f")
glue("ch09_relax_hi", relax_xz[hi], fmt=",.0f")
glue("ch09_relax_4", relax_xz[i4], fmt=",.0f")
glue("ch09_per_snr_lo", min(per_snr), fmt=".0f")
glue("ch09_per_snr_hi", max(per_snr), fmt=".0f")
glue("ch09_relax_plain", max(relax["(eps, z), gamma_z = 0.3, no preconditioning"]), fmt=".0f")
assert res_slow < 0.01
assert max(relax["(eps, z), gamma_z = 0.3, no preconditioning"]) < 20                   # a plain z step: fast everywhere
assert relax_xz[hi] > 100 * K_chain and relax_xz[i4] > 10 * K_chain                    # the (x, z) chain: stable but slow
assert all(10 < v < 30 for v in per_snr)                                                 # 16 to 20 x SNR steps

# %% [markdown]
# The factor $1 + \text{SNR}$ is the curvature of $z$ with $x_t$ held fixed, so it keeps the $(x, z)$
# chain stable. But to reach $\rho$, $x_t$ and $z$ must move together (the chain's slowest direction
# keeps $x_t - \alpha A z$ near zero: its residual is {glue:text}`ch09_res_slow:.4f` at $\lambda = +6$), and along
# that direction the chain needs {glue:text}`ch09_per_snr_lo` to {glue:text}`ch09_per_snr_hi` times the SNR in steps
# to relax: {glue:text}`ch09_relax_hi` at $\lambda = +6$ and {glue:text}`ch09_relax_4` at $\lambda = +4$, against at
# most {glue:text}`ch09_relax_plain` for the plain $z$ step at any level. That is the
# difference between a stable step and a fast chain. Yet on a 2D mixture a plain $z$ step must be
# far smaller to stay stable (section 4). The reason is the curvature of $-\log \rho$ in $z$, the quantity that
# bounds a stable step ($\gamma_z \lesssim 2 / \text{curvature}$). In the $(\epsilon, z)$ coordinates it is
#
# $$-\nabla_z^2 \log \rho = I - \alpha^2 J^\top \big(\nabla_x ds\big) J + (\text{terms with } \nabla J),$$
#
# and $\nabla_x ds = \nabla^2 \log p_\lambda - \nabla^2 \log q_\theta^\lambda$. For two broad Gaussians the two
# Hessians nearly cancel and the curvature stays at or below 1 (for this pair it falls with the SNR).
# For a mixture with narrow modes (standard deviations 0.1 to 0.3 in `irregular`), the teacher's
# Hessian near a mode $j$ of standard deviation $\omega_j$ is about $-1/(\alpha^2 \omega_j^2 + \sigma^2)$,
# which the student only matches where the generator already put its modes; the mismatch is
# multiplied by $\alpha^2 |J|^2$ and grows with the SNR. `emd_lib.experiments.ch04.z_curvature`
# measures it by differentiating $\nabla_z \log \rho$ with autograd. We check it on the linear pair,
# where $-\nabla_z^2 \log \rho = I - \alpha^2 A^\top (P_q - P_p) A$ with $P$ the precisions of $p_\lambda$ and
# $q_\theta^\lambda$, and then measure it for an MLP generator initialised from the `irregular` teacher,
# with a student score fitted to it (the state at the start of a distillation run).

# %%
# the linear pair: autograd curvature against the closed form
a_, sig_ = level(2.0)
curv_lin = sweeps.z_curvature(gen, teacher, student, 2.0, n=8)
Pp = torch.linalg.inv(a_**2 * C + sig_**2 * torch.eye(2))
Pq = torch.linalg.inv(a_**2 * A @ A.T + sig_**2 * torch.eye(2))
curv_exact = torch.linalg.eigvalsh(torch.eye(2) - a_**2 * A.T @ (Pq - Pp) @ A)[-1]
torch.testing.assert_close(curv_lin, curv_exact.expand(8), rtol=1e-4, atol=1e-5)

# an MLP generator initialised from the mixture teacher at lam* = -2, with a fitted student score
mix = irregular()
t0 = time.perf_counter()
d0 = Distiller(mix, DistillConfig(width=128, init_steps=fast_or(400, 100), student_warmup=fast_or(300, 80), seed=0))
d0.warmup()
print(f"generator initialised and student fitted in {time.perf_counter() - t0:.1f} s")

n_curv = fast_or(500, 100)
curv = {"linear-Gaussian": [], "mixture (MLP at init)": []}
for lam in lams:
    curv["linear-Gaussian"].append(sweeps.z_curvature(gen, teacher, student, lam, n=n_curv))
    curv["mixture (MLP at init)"].append(sweeps.z_curvature(d0.generator, mix, d0.student, lam, n=n_curv))
display(table([[name] + [f"{float(c.median()):.2f} [{float(c.quantile(0.9)):.1f}]" for c in rows]
               for name, rows in curv.items()], ["pair"] + lam_cols,
              title="largest curvature of -log ρ in z, (ε, z) chain: median [90th percentile]"))
p90 = torch.tensor([float(c.quantile(0.9)) for c in curv["mixture (MLP at init)"]])
snr = torch.tensor([math.exp(l) for l in lams])
bound_none = 2 / p90                       # stable plain step: gamma_z < 2 / curvature
bound_snr = 2 * (1 + snr) / p90            # stable base step when the step is gamma_z / (1 + SNR)
display(table([["no preconditioning"] + [f"{v:.3f}" for v in bound_none.tolist()],
               ["gamma_z / (1 + SNR)"] + [f"{v:.3g}" for v in bound_snr.tolist()]], ["z step"] + lam_cols,
              title="largest stable gamma_z at the 90th percentile of the curvature, mixture"))
FAST_CURV = f"{n_curv} latents and a shorter initialisation; the full run uses 500"
glue("ch09_p90_hi", float(p90[-1]), fmt=".1f", fast=FAST_CURV)
glue("ch09_gauss_hi", float(curv["linear-Gaussian"][-1].quantile(0.9)), fmt=".2f")   # closed form: the same
glue("ch09_bound_none", float(bound_none.min()), fmt=".3f", fast=FAST_CURV)
glue("ch09_bound_snr", float(bound_snr.min()), fmt=".2g", fast=FAST_CURV)
glue("ch09_bound_snr_at", f"{lams[int(bound_snr.argmin())]:+.0f}", fast=FAST_CURV)
assert all(float(c.max()) <= 1 + 1e-3 for c in curv["linear-Gaussian"])            # the Gaussian pair: at or below 1
assert float(curv["linear-Gaussian"][-1].max()) < 0.6
assert float(p90[-1]) > 5 * float(curv["linear-Gaussian"][-1].quantile(0.9))   # the mixture is far stiffer at high SNR
assert float(bound_snr.min()) > 5 * float(bound_none.min())                   # and SNR scaling removes most of it
assert lams[int(bound_snr.argmin())] <= 0                                     # the binding level is a noisy one

# %% [markdown]
# At low SNR the curvature is the prior's, 1, for both. At high SNR the mixture's climbs far
# above the Gaussian pair's (at $\lambda = +6$ its 90th percentile is {glue:text}`ch09_p90_hi`, the pair's
# {glue:text}`ch09_gauss_hi:.2f`), so a plain $z$ step must be small enough for the stiffest level (at most
# {glue:text}`ch09_bound_none`), and then it barely moves $z$ at the others. Dividing by $1 + \text{SNR}$
# over-corrects (the curvature grows more slowly than the SNR), but it turns the binding
# constraint into the prior's at low SNR: the largest stable base step, {glue:text}`ch09_bound_snr`, is set
# at $\lambda =$ {glue:text}`ch09_bound_snr_at`. These bounds hold at initialisation; during training the student
# lags the generator and the curvature moves, so the practical limits may be lower. Section 4
# measures them.

# %% [markdown]
# ## 2. Where each chain leads EM: the linear pair
#
# A chain's job is to feed the M-step. Chapter 3 ran EM on the linear pair with the
# $(\epsilon, z)$ and $(\epsilon, -)$ E-steps; here are all four coordinate choices, with the same
# M-step (one SGD step per iteration on the regression, learning rate $0.5\,\sigma^2/\alpha^2$
# decaying as $t_0/(t_0 + t)$ with $t_0 = 30$, `emd_lib.em.langevin_em`), $K = 8$, $\lambda = 0$, exact
# student, no noise cancellation. The $x$-chains come with either the fixed step of the 2D table of
# section 3, $\gamma_x = 0.3\,\sigma^2(\lambda = 6)$, or the per-level step $0.3\,\sigma^2$.

# %%
GX = sweeps.gamma_x_fixed()
em_chains = {
    "(eps, z)": LangevinConfig(K=8, move_z=True, cancel="none"),
    "(eps, -)": LangevinConfig(K=8, cancel="none"),
    "(x, z), gamma_x = 0.3 sigma^2": LangevinConfig(K=8, space="x", move_z=True, cancel="none"),
    f"(x, z), gamma_x = {GX:.2g}": LangevinConfig(K=8, space="x", gamma_x=GX, move_z=True, cancel="none"),
    f"(x, -), gamma_x = {GX:.2g}": LangevinConfig(K=8, space="x", gamma_x=GX, cancel="none"),
}
em_iters, em_batch = fast_or(200, 35), 512
A_init, b_init = A.clone(), b.clone()
t0 = time.perf_counter()
em_hist = {name: emd_lib.em.langevin_em(A_init, b_init, m, C, 0.0, cfg, iters=em_iters, batch=em_batch, seed=0)
           for name, cfg in em_chains.items()}
print(f"{len(em_chains)} EM runs of {em_iters} iterations in {time.perf_counter() - t0:.1f} s")
err_end = {name: float(np.mean(h["errors"][-10:])) for name, h in em_hist.items()}   # the last 10 iterations
tr = {name: float(torch.trace(h["A"] @ h["A"].T)) for name, h in em_hist.items()}
err0, tr0 = emd_lib.em.fit_error(A_init, b_init, m, C), float(torch.trace(A_init @ A_init.T))
em_rows = [["start", err0, tr0, str((A_init @ A_init.T).flatten().numpy().round(2)), str(b_init.numpy().round(2))]]
em_rows += [[n, err_end[n], tr[n], str((h["A"] @ h["A"].T).flatten().numpy().round(2)), str(h["b"].numpy().round(2))]
            for n, h in em_hist.items()]
display(table(em_rows, ["E-step", "error", "trace AA^T", "AA^T", "b"], fmt="{:.3f}",
              title=f"EM on the linear pair after {em_iters} iterations; C = {C.flatten().numpy().round(2)}, m = {m.numpy()}"))
fx_z, fx_0, per_lvl = f"(x, z), gamma_x = {GX:.2g}", f"(x, -), gamma_x = {GX:.2g}", "(x, z), gamma_x = 0.3 sigma^2"
FAST_EM = f"{em_iters} EM iterations; the full run uses 200"
glue("ch09_gx_eps", GX / level(0.0)[1] ** 2, fmt=".4f")
glue("ch09_gx_ratio", 0.3 * level(0.0)[1] ** 2 / GX, fmt=".0f")
glue("ch09_err0", err0, fmt=".3f")
glue("ch09_tr0", tr0, fmt=".2f")
glue("ch09_trC", float(torch.trace(C)), fmt=".2f")
for key, v in (("err_x0", err_end[fx_0]), ("err_xz", err_end[fx_z])):
    glue(f"ch09_{key}", v, fmt=".3f", fast=FAST_EM)
for key, v in (("tr_xz", tr[fx_z]), ("tr_xs2", tr[per_lvl]), ("tr_ez", tr["(eps, z)"])):
    glue(f"ch09_{key}", v, fmt=".2f", fast=FAST_EM)
assert tr[per_lvl] < 0.9 * float(torch.trace(C)) < tr["(eps, z)"]   # (x, z) shrinks A
assert err_end[fx_z] > err0 and tr[fx_z] < 0.6 * tr0          # the fixed-step (x, z) chain shrinks the generator
assert 0.75 * err0 < err_end[fx_0] < err0                     # the fixed-step (x, -) chain moves it only a little
assert 150 < 0.3 * level(0.0)[1] ** 2 / GX < 250                  # a few hundred times smaller

# %% [markdown]
# Both $\epsilon$-chains reach the fit (up to the Monte Carlo floor of chapter 3). The fixed-step
# $x$-chains do not: at $\lambda = 0$ their step in $\epsilon$ units, $\gamma_x/\sigma^2 =$ {glue:text}`ch09_gx_eps:.4f`, is
# {glue:text}`ch09_gx_ratio` times smaller than the $\epsilon$-chain's 0.3, so in $K = 8$ steps the chain carries
# almost nothing from the teacher. The fixed-step $(x, -)$ chain moves the generator only a little
# towards the fit: its error ends at {glue:text}`ch09_err_x0`, from {glue:text}`ch09_err0:.3f` at the start. The
# fixed-step $(x, z)$ chain moves it the wrong way: the trace of $A A^\top$ shrinks to {glue:text}`ch09_tr_xz`,
# from the starting generator's {glue:text}`ch09_tr0:.2f`, and the error ends *above* the starting one, at
# {glue:text}`ch09_err_xz`. The $(x, z)$ chain with the per-level step also settles with $A A^\top$ visibly
# *smaller* than $C$ (trace {glue:text}`ch09_tr_xs2` against {glue:text}`ch09_trC:.2f`; the $(\epsilon, z)$ chain's is
# {glue:text}`ch09_tr_ez`). The M-step is not to blame: chapter 3 showed that with exact samples of $\rho$ its gradient is
# the forward-KL gradient, zero at the fit. The culprit is the chain's discretisation bias: an
# unadjusted Langevin chain with a finite step samples a slightly wrong law.
#
# **The $z$ step's bias, made exact.** A 1D version: teacher $\mathcal N(0, 1)$, generator $g(z) = z$
# (the fit), exact student, $\lambda = 0$. The score gap is then $ds = c\, x_t$ with $c = 0$, both chains
# are linear, and `chain_cov_1d` (chapter 4, section 4) gives their exact covariance over
# $(u, z, \eta)$. Start at exact $\rho$ and compute the slope the M-step fits, $\mathbb E[x_t z] / (\alpha\, \mathbb E[z^2])$
# (exact: 1), after $K = 8$ steps and for each chain's stationary law (many steps). The two steps are
# varied separately: the steps used above ($\gamma_x = 0.3\,\sigma^2$, $\gamma_z = 0.1/(1 + \text{SNR})$), both
# ten times smaller, the fixed $x$ step of the EM runs above with the same $z$ step, and the
# per-level $x$ step with a ten times smaller $z$ step. (The $(\epsilon, z)$ chain gets the same steps,
# with $\gamma_\epsilon = \gamma_x / \sigma^2$.)

# %%
from emd_lib.em import chain_cov_1d       # chapter 4, section 4: the exact covariance of the 1D linear chain


a0, sig0 = level(0.0)
gz0 = 0.1 / (1 + a0**2 / sig0**2)                          # the library's default z step at lam = 0
start_x = torch.tensor([[a0**2 + sig0**2, a0, 0], [a0, 1, 0], [0, 0, 0]])   # exact rho at the fit, over (x_t, z, eta)
start_e = torch.diag(torch.tensor([1.0, 1.0, 0.0]))                       # the same law over (eps, z, eta)
steps_1d = {"the steps above": (0.3 * sig0**2, gz0), "both steps / 10": (0.03 * sig0**2, gz0 / 10),
            f"gamma_x = {GX:.2g} (fixed), gamma_z above": (GX, gz0), "gamma_x above, gamma_z / 10": (0.3 * sig0**2, gz0 / 10)}
slopes = {}
for name, (gx_, gz_) in steps_1d.items():
    for K_, label in ((8, "K = 8"), (3000, "stationary")):
        Sx = chain_cov_1d("x", a0, sig0, 0.0, gx_, gz_, K_, start_x)
        Se = chain_cov_1d("eps", a0, sig0, 0.0, gx_ / sig0**2, gz_, K_, start_e)
        # slope = E[x_t z] / (alpha E[z^2]), with x_t = alpha z + sigma eps in the eps-chain
        slopes[name, label] = (float(Sx[0, 1] / (a0 * Sx[1, 1])),
                               float((a0 * Se[1, 1] + sig0 * Se[0, 1]) / (a0 * Se[1, 1])))
shrink = {k: 1 - v[0] for k, v in slopes.items()}
ratio_1d = {(n, k): shrink[n, k] / shrink["the steps above", k] for n, k in shrink}
display(table([[n, k, sx, se, ratio_1d[n, k]] for (n, k), (sx, se) in slopes.items()],
              ["steps", "chain run", "(x, z)", "(ε, z)", "(x, z) shrinkage / the steps above's"],
              fmt={"(x, z)": "{:.5f}", "(ε, z)": "{:.5f}", "(x, z) shrinkage / the steps above's": "{:.3f}"},
              title="slope the M-step fits at the fit (exact: 1), 1D linear pair, chains started at exact ρ"))
fixed_x, z10 = f"gamma_x = {GX:.2g} (fixed), gamma_z above", "gamma_x above, gamma_z / 10"
for key, v in (("k8", shrink["the steps above", "K = 8"]), ("stat", shrink["the steps above", "stationary"]),
               ("fx_k8", shrink[fixed_x, "K = 8"]), ("fx_stat", shrink[fixed_x, "stationary"]),
               ("z10", shrink[z10, "stationary"])):
    glue(f"ch09_shrink_{key}", v, fmt=".1%")              # exact moments: the same in fast mode
glue("ch09_fade_both", 1 / ratio_1d["both steps / 10", "stationary"], fmt=".0f")
glue("ch09_fade_z", 1 / ratio_1d[z10, "stationary"], fmt=".0f")
assert all(abs(se - 1) < 1e-9 for sx, se in slopes.values())         # (eps, z): exact at any step size
assert all(0.02 < shrink["the steps above", k] < 0.04 for k in ("K = 8", "stationary"))   # (x, z): about 3%
assert ratio_1d["both steps / 10", "K = 8"] < 0.1                            # both steps smaller: it fades
assert 0.05 < ratio_1d["both steps / 10", "stationary"] < 0.15
assert ratio_1d[fixed_x, "K = 8"] > 0.5 and ratio_1d[fixed_x, "stationary"] > 0.75     # the x step hardly matters
assert 0.02 < shrink[fixed_x, "stationary"] < 0.03 and 0.015 < shrink[fixed_x, "K = 8"] < 0.025
assert all(0.05 < ratio_1d[z10, k] < 0.15 for k in ("K = 8", "stationary"))  # the z step does
assert all(0.002 < shrink[z10, k] < 0.004 for k in ("K = 8", "stationary"))

# %% [markdown]
# At the steps used above one E-step of the $(x, z)$ chain shrinks the slope by {glue:text}`ch09_shrink_k8`,
# and its stationary law by {glue:text}`ch09_shrink_stat`: more Langevin steps do not help. With both steps
# ten times smaller the stationary shrinkage is {glue:text}`ch09_fade_both` times less, so it is a
# discretisation bias, not a property of the regression. And it is the $z$ step's: with the $x$ step
# cut to the fixed step of the EM runs, {glue:text}`ch09_gx_ratio` times smaller at $\lambda = 0$, and the $z$
# step unchanged, the slope is still {glue:text}`ch09_shrink_fx_k8` low after 8 steps and
# {glue:text}`ch09_shrink_fx_stat` low in the stationary law; with the per-level $x$ step and only the $z$ step
# ten times smaller, the shrinkage falls {glue:text}`ch09_fade_z`-fold, to {glue:text}`ch09_shrink_z10`. The
# $(\epsilon, z)$ chain's slope is exactly 1 at every step. The bias grows with $\gamma_z$ and depends far
# less on $\gamma_x$ (these are exact moments, the same in fast mode).
#
# What *is* structural is where each chain's bias goes. At the fit, with an exact student, the score
# gap is zero, so the $(\epsilon, z)$ chain moves $\epsilon$ without ever looking at $z$: $\epsilon^K$ stays
# independent of $z^K$, $\mathbb E[\epsilon^K \mid z^K] = 0$, and the M-step's target is unbiased *for any
# step size* (its slope is exactly one). The $(x, z)$ chain couples $x_t$ and $z$ through the
# likelihood term, and its discretisation error lands on their covariance, which is what the
# regression reads: it pulls the slope in, and EM, applying that pull at every iteration, settles
# below $C$. The same pull explains the fixed-step $(x, z)$ run: its $z$ step is the library's default
# whatever $\gamma_x$ is, so the pull keeps most of its strength while the tiny $x$ step brings almost
# no teacher signal to oppose it, and EM shrinks the generator. This is **the $z$ step's bias**;
# section 3 refers back here.
#
# Noise cancellation does not help the $(x, z)$ chain either. Chapter 4 derived it in the $\epsilon$
# coordinates; in $(x, z)$ the cancelled target is (nearly) $\alpha g(z^0)$ plus the drift, regressed on
# the moved latent $z^K$. EM with full cancellation, against the runs above without it:

# %%
nc_chains = {
    "(eps, -) full": LangevinConfig(K=8, cancel="full"),
    "(eps, z) full": LangevinConfig(K=8, move_z=True, cancel="full"),
    "(x, z), gamma_x = 0.3 sigma^2, full": LangevinConfig(K=8, space="x", move_z=True, cancel="full"),
}
nc_hist = {"(eps, -) none": em_hist["(eps, -)"], "(x, z), gamma_x = 0.3 sigma^2, none": em_hist["(x, z), gamma_x = 0.3 sigma^2"]}
nc_hist.update({name: emd_lib.em.langevin_em(A_init, b_init, m, C, 0.0, cfg, iters=em_iters, batch=em_batch, seed=0)
                for name, cfg in nc_chains.items()})
nc_err = {name: float(np.mean(h["errors"][-10:])) for name, h in nc_hist.items()}
display(table(list(nc_err.items()), ["E-step, cancellation", "error"], fmt="{:#.3g}",
              title=f"EM on the linear pair: error, mean of the last 10 of {em_iters} iterations"))
fold = nc_err["(eps, -) none"] / nc_err["(eps, -) full"]
glue("ch09_nc_fold", f"{float(f'{fold:.2g}'):,.0f}", fast=FAST_EM)     # two significant digits
for key, n in (("e_none", "(eps, -) none"), ("e_full", "(eps, -) full"), ("xz_none", f"{per_lvl}, none"),
               ("xz_full", f"{per_lvl}, full")):
    glue(f"ch09_nc_{key}", nc_err[n], fmt="#.3g", fast=FAST_EM)
assert nc_err["(eps, -) full"] < 0.2 * nc_err["(eps, -) none"]
assert nc_err[f"{per_lvl}, full"] > nc_err[f"{per_lvl}, none"]

fig, ax = plt.subplots(1, 2, figsize=(11, 3.6))
for name, h in em_hist.items():
    ax[0].semilogy(h["errors"], label=name)
ax[0].set_xlabel("EM iteration"), ax[0].set_ylabel(r"$\|AA^\top - C\|_F + \|b - m\|$")
ax[0].set_title("linear pair, no noise cancellation"), ax[0].legend(fontsize=7)
for name, h in nc_hist.items():
    ax[1].semilogy(h["errors"], "--" if name.endswith("none") else "-", label=name)
ax[1].set_xlabel("EM iteration"), ax[1].set_title("none against full cancellation"), ax[1].legend(fontsize=7)
fig.tight_layout()
plt.show()

# %% [markdown]
# Full cancellation lowers the $(\epsilon, -)$ chain's Monte Carlo floor: its final error falls from
# {glue:text}`ch09_nc_e_none` to {glue:text}`ch09_nc_e_full`, by a factor of about {glue:text}`ch09_nc_fold`. It leaves the $(x, z)$
# chain further from the fit than without it: {glue:text}`ch09_nc_xz_full` against {glue:text}`ch09_nc_xz_none`.

# %% [markdown]
# ## 3. The four-way table in 2D
#
# The paper ablates the E-step's coordinates, $(x, z)$, $(\epsilon, z)$, $(x, -)$ and $(\epsilon, -)$
# ("$-$": that coordinate frozen), on ImageNet with $K = 8$; its numbers for that table are not
# known to us, so we only measure our own. Here: distillation of the `irregular` mixture
# (7 modes of unequal weights and widths) with the exact teacher, $K = 8$, $\gamma_\epsilon = 0.3$,
# $z$ steps $\gamma_z = 0.1/(1 + \text{SNR})$ (the library's default), full noise cancellation,
# three seeds per variant, and Diff-Instruct (DI) as a reference. The $x$-chains use one fixed
# step for every level, $\gamma_x = \gamma_\epsilon\, \sigma^2(\lambda_{\max})$: the step that equals the
# $\epsilon$-chain's $\gamma_\epsilon = 0.3$ at the least noisy level we draw (our convention; chapter 4's
# stability bound there is $2\sigma^2(\lambda_{\max})$, $2/0.3 \approx 6.7$ times larger). Metrics
# (`emd_lib.metrics.mixture_report` on 5000 samples of the EMA generator): total variation
# between the generated and true mode masses (TV, lower is better), modes holding at least
# 20% of their weight, the fraction of samples within 3 standard deviations of their mode,
# MMD, and k-NN precision and recall.
#
# The sweeps ran once (`python -m emd_lib experiment ch04 --sweep space`, and `--sweep space_x` for two
# more $(x, z)$ chains); the chapter loads their JSON.

# %%
space = sweeps.load_sweep("space")
display(sweeps.sweep_table(space))
space_x = sweeps.load_sweep("space_x")
display(sweeps.sweep_table(space_x))

fig, ax = plt.subplots(1, 3, figsize=(12, 3.8))
sweeps.seed_dots(ax[0], [space, space_x], "tv", "total variation of mode masses (lower is better)")
sweeps.seed_dots(ax[1], [space, space_x], "mmd", "MMD (lower is better)", log=True)
sweeps.seed_dots(ax[2], [space, space_x], "recall", "recall (higher is better)")
fig.tight_layout()
plt.show()

# %%
S = {**space["summary"], **space_x["summary"]}
tv = {n: S[n]["tv"] for n in S}
# where does the fixed x step move the chain at all? (step in eps units above 0.01)
lam_grid = torch.linspace(-6, 6, 1201)
sig2 = VP.alpha_sigma(lam_grid)[1] ** 2
lam_moves = float(lam_grid[(GX / sig2) > 0.01].min())
for key, n in (("e0", "(eps, -)"), ("di", "DI"), ("ez", "(eps, z)"), ("x0", "(x, -)")):
    glue(f"ch09_tv_{key}", f"{tv[n][0]:.3f} ± {tv[n][1]:.3f}")
for key, n in (("e0", "(eps, -)"), ("ez", "(eps, z)")):
    glue(f"ch09_recall_{key}", S[n]["recall"][0], fmt=".2f")
glue("ch09_lam_moves", lam_moves, fmt=".1f")
assert 2.4 < lam_moves < 2.6
xz_modes = sweeps.per_seed(space, "(x, z)", "modes_covered")
xz_nc_modes = sweeps.per_seed(space_x, "(x, z) no cancel", "modes_covered")
assert (xz_modes == 1).all() and (xz_nc_modes == 1).all()          # (x, z), fixed step: one mode in every seed
prec = {n: S[n]["precision"][0] for n in S}
in3 = {n: S[n]["within_3sd"][0] for n in S}
xs2 = "(x, z) gamma_x = 0.3 sigma^2"
assert prec[xs2] == min(prec.values()) and in3[xs2] == min(in3.values())    # the most smeared samples
glue("ch09_prec_xs2", prec[xs2], fmt=".2f")
glue("ch09_in3_xs2", in3[xs2], fmt=".0%")
glue("ch09_prec_ez", prec["(eps, z)"], fmt=".2f")
glue("ch09_in3_ez", in3["(eps, z)"], fmt=".0%")
# the settings the runs used: every chain that moves z cancelled the noise, except the one named so
lang = {n: res["variants"][n]["langevin"] for res in (space, space_x) for n in res["variants"] if n != "DI"}
print("noise cancellation in the runs where z moves: " + ", ".join(f"{n} {v['cancel']}" for n, v in lang.items() if v["move_z"]))

# %% [markdown]
# What the table says, variant by variant:
#
# * **$(\epsilon, -)$ and Diff-Instruct agree.** Their TV ({glue:text}`ch09_tv_e0` and {glue:text}`ch09_tv_di`),
#   MMD, precision and recall are the same within the spread between seeds. On this mixture, with this generator and budget, EMD's forward
#   KL and DI's reverse KL reach the same place (chapter 2 shows where they part).
# * **Moving $z$ did not pay in 2D.** $(\epsilon, z)$ covers about as many modes and has a somewhat
#   higher recall ({glue:text}`ch09_recall_ez:.2f` against {glue:text}`ch09_recall_e0:.2f`), but its TV ({glue:text}`ch09_tv_ez`)
#   and MMD are no better than $(\epsilon, -)$'s. The paper reports
#   $(\epsilon, z)$ as its best variant on ImageNet; we do not see that advantage here. These runs
#   cancel the noise while $z$ moves, which biases the gradient (chapter 4, section 4.1). Chapter 4's sweep also
#   trains $(\epsilon, z)$ without cancellation, and its TV and MMD are no better than those of
#   $(\epsilon, -)$ without cancellation either; chapter 5's linear fit, with and without
#   cancellation, shows where a moving $z$ does change the result.
# * **A fixed step in $x$ is worse, and erratic.** The fixed step moves the chain appreciably only at
#   the least noisy levels (it exceeds 0.01 in $\epsilon$ units only above $\lambda \approx$ {glue:text}`ch09_lam_moves:.1f`),
#   so the E-step carries the teacher's signal only where mass is no longer moved between modes; the
#   TV of $(x, -)$, {glue:text}`ch09_tv_x0`, is higher and varies from seed to seed.
# * **$(x, z)$ with the fixed step collapsed to a single mode in every seed**, with full noise
#   cancellation and without it, so cancellation is not needed to explain it. Our reading is the pull
#   of section 2: on the linear pair the same fixed-step $(x, z)$ chain shrank the generator, its
#   error ending above its start, and the 1D check traced the pull to the $z$ step, whose size does
#   not depend on $\gamma_x$, while the tiny $x$ step carries almost no teacher signal. On the mixture we
#   did not measure the pull itself.
# * **$(x, z)$ with the per-level step** keeps all modes, but its samples are the most smeared of
#   all (the lowest precision, {glue:text}`ch09_prec_xs2:.2f` against {glue:text}`ch09_prec_ez:.2f` for $(\epsilon, z)$, and the
#   fewest within 3 standard deviations, {glue:text}`ch09_in3_xs2` against {glue:text}`ch09_in3_ez`). There are two candidates: the
#   $z$ step's bias (section 2), and noise cancellation while $z$ moves, which
#   this run used and which biases the gradient (chapter 4, section 4.1; on the linear pair the
#   per-level $(x, z)$ chain with full cancellation ends further from the fit than without). This
#   sweep has no per-level $(x, z)$ run without cancellation, so it cannot separate the two.
#
# So the reparametrisation is what matters in 2D: both chains in $\epsilon$ work, both in $x$
# are worse, and whether $z$ moves makes little difference once the coordinates are right, with
# noise cancellation here and without it in chapter 4's sweep.

# %% [markdown]
# ## 4. How large a $z$ step is stable?
#
# Section 1 predicted, from the curvature at initialisation, that a plain $z$ step must stay below
# a few hundredths while the SNR-preconditioned base step may be of order one. The sweep below
# trains the $(\epsilon, z)$ chain with several $\gamma_z$ under both schemes (three seeds, shorter
# runs, since a divergence shows early) and records whether the loss or the gradient ever turned
# non-finite, how far $z$ moved per E-step on average, and the final quality
# (`python -m emd_lib experiment ch04 --sweep gamma_z`).

# %%
gz = sweeps.load_sweep("gamma_z")
display(sweeps.sweep_table(gz, keys=("tv", "modes_covered", "within_3sd", "precision", "mmd", "recall")))
display(sweeps.divergence_table(gz))
limits = sweeps.stability_limits(gz)                  # per scheme: (largest stable step, smallest diverged step)
for sch, bound in (("none", float(bound_none.min())), ("snr", float(bound_snr.min()))):
    stable, unstable = limits[sch]
    glue(f"ch09_stable_{sch}", stable, fmt="g")
    glue(f"ch09_unstable_{sch}", unstable, fmt="g")
    where = "between them" if stable < bound < unstable else "above both" if bound >= unstable else "below both"
    glue(f"ch09_where_{sch}", where, fast=FAST_CURV)     # the bound is measured live (section 1)
GS = gz["summary"]
ok = [n for n in gz["runs"] if GS[n]["diverged"] == 0]
glue("ch09_tv_lo", min(GS[n]["tv"][0] for n in ok), fmt=".3f")
glue("ch09_tv_hi", max(GS[n]["tv"][0] for n in ok), fmt=".3f")
glue("ch09_tv_sd", max(GS[n]["tv"][1] for n in ok), fmt=".3f")
div_steps = [r["steps_done"] for runs in gz["runs"].values() for r in runs if r["diverged"]]
glue("ch09_div_first", min(div_steps))
glue("ch09_div_last", max(div_steps))
# the quality of the plain step's stable settings, from the smallest step to the largest
plain_ok = sorted((n for n in ok if n.startswith("none")), key=lambda n: float(n.split()[-1]))
for key in ("within_3sd", "precision"):
    glue(f"ch09_{key}_small", GS[plain_ok[0]][key][0], fmt=".3f")
    glue(f"ch09_{key}_large", GS[plain_ok[-1]][key][0], fmt=".3f")

# %% [markdown]
# The plain $z$ step is stable up to {glue:text}`ch09_stable_none` and diverged at {glue:text}`ch09_unstable_none`;
# the SNR-preconditioned base step is stable up to {glue:text}`ch09_stable_snr` and diverged at
# {glue:text}`ch09_unstable_snr`, ten times larger. Each step that diverged did so in every seed, early: the
# runs completed only {glue:text}`ch09_div_first` to {glue:text}`ch09_div_last` of their 400 generator steps. The
# curvature at initialisation (section 1) predicts the scale of both limits: the plain step's bound,
# {glue:text}`ch09_bound_none`, lies {glue:text}`ch09_where_none`, the preconditioned one, {glue:text}`ch09_bound_snr`,
# {glue:text}`ch09_where_snr`. Where a measured limit falls below its bound, the curvature presumably
# grew during training, when the student lags behind the generator. At every stable setting $z$ does move (the
# mean $|z^K - z^0|$ in the table). The final TV does not depend on $\gamma_z$ beyond the spread between
# seeds ({glue:text}`ch09_tv_lo:.3f` to {glue:text}`ch09_tv_hi:.3f` over the stable settings, seed spread up to
# {glue:text}`ch09_tv_sd:.3f`), but the sharpness does: in both schemes the fraction within 3 standard
# deviations and the precision fall as the $z$ step grows, from the smallest to the largest stable
# step by more than the seeds' spread (plain step: {glue:text}`ch09_within_3sd_small:.3f` to
# {glue:text}`ch09_within_3sd_large:.3f` within 3 sd, precision {glue:text}`ch09_precision_small:.3f` to
# {glue:text}`ch09_precision_large:.3f`), and the MMD rises with it. Larger $z$ steps smear the samples.
# So $(\epsilon, z)$ with `z_precondition="snr"` is stable for base steps up to 0.3, and we keep the
# library's default of 0.1, inside it; its samples are as sharp as those of 0.03 within the seeds'
# spread, while 0.3 is visibly blurrier. What we did not find, in 2D, is a gain from moving $z$ at
# all (section 3).

# %% [markdown]
# ### 4.1 A trust region for the $z$ step
#
# The sweep above used the library's joint setting, with the SNR preconditioning and full noise
# cancellation. Without cancellation, which biases the gradient once $z$ moves (chapter 4, section 4.1),
# the plain step is the natural one to try, and with a network generator it does not survive
# training: the chain runs off and the loss turns non-finite within a few hundred updates. The
# mechanism is a feedback. The drift of $z$ is $\gamma_z(\alpha J^\top \Delta s - z)$; where the
# generator is steep (between modes $J$ is large) one step carries $z$ far, to latents whose images
# the student score never saw, where its score is wrong and the gap $\Delta s$ larger still, and the
# next step goes further. (A Metropolis correction would stop it, but it needs $\log q_\lambda$, which a
# score network does not give.)
#
# What worked is a trust region: no sample's $z$ drifts by more than $0.1\sqrt{\dim z}$ in one step
# (`LangevinConfig(z_clip=0.1)`; the injected noise is left alone). The sweep below compares, on three
# targets with three seeds each (1000 updates, width 128, $K = 8$): the frozen-$z$ chain, the library's
# earlier joint setting, the plain step $\gamma_z = 0.05$ without cancellation, the same with the trust
# region, the trust region with $\gamma_z = 0.02$, the plain step $\gamma_z = 0.02$ alone, and Diff-Instruct.

# %%
zstep = {m: sweeps.load_sweep(f"zstep_{m}") for m in ("far", "irregular", "grid25")}
for m, res in zstep.items():
    display(sweeps.sweep_table(res, keys=("tv", "modes_covered", "within_3sd", "mmd", "recall"), title=m))
far_w = float(get_mixture("far").weights.min())
light = sweeps.light_masses(zstep["far"])              # per variant, the runs that finished
display(table([[n, ", ".join(f"{v:.3f}" for v in ms) or "-"] for n, ms in light.items()],
              ["variant", "mass per seed"], title=f"far: the light mode's mass (weight {far_w:.2f})"))
CLIP, CLIP2 = "(eps, z) none 0.05 clip 0.1", "(eps, z) none 0.02 clip 0.1"
PLAIN, OLD = "(eps, z) none 0.05", "(eps, z) snr 0.1 full"
glue("ch09_div_plain", sum(res["summary"][PLAIN]["diverged"] for res in zstep.values()))
glue("ch09_n_plain", sum(res["summary"][PLAIN]["n"] for res in zstep.values()))
glue("ch09_div_clip", sum(res["summary"][c]["diverged"] for res in zstep.values() for c in (CLIP, CLIP2)))
glue("ch09_n_clip", sum(res["summary"][c]["n"] for res in zstep.values() for c in (CLIP, CLIP2)))
reached = [r["steps_done"] for res in zstep.values() for r in res["runs"][PLAIN]]
glue("ch09_reach_lo", min(reached))
glue("ch09_reach_hi", max(reached))
off = {c: np.mean([abs(v - far_w) for v in light[c]]) for c in (CLIP, CLIP2)}   # the light mode's distance from its weight
glue("ch09_off_clip", off[CLIP], fmt=".3f")
glue("ch09_off_clip2", off[CLIP2], fmt=".3f")
glue("ch09_clip_dev", max(abs(v / far_w - 1) for c in (CLIP, CLIP2) for v in light[c]), fmt=".1%")
glue("ch09_old_lo", min(light[OLD]) / far_w, fmt=".1f")
glue("ch09_old_hi", max(light[OLD]) / far_w, fmt=".1f")
ev = {n: emd_lib.distill.evals_per_step("emd", 8, move_z=mz) for n, mz in (("(eps, -)", False), (CLIP2, True))}
print("network evaluations per generator update (K = 8): " + "; ".join(f"{n}: {e}" for n, e in ev.items()))
glue("ch09_more_fwd", ev[CLIP2]["generator_fwd"] - ev["(eps, -)"]["generator_fwd"])

fig, ax = plt.subplots(1, 3, figsize=(12, 3.6))
for a, (m, res) in zip(ax, zstep.items()):
    sweeps.seed_dots(a, [{"runs": {n: [r for r in runs if not r["diverged"]] for n, runs in res["runs"].items()
                                   if not all(r["diverged"] for r in runs)}}], "tv", f"{m}: TV of mode masses")
fig.tight_layout()
plt.show()

# %% [markdown]
# The trust region makes the joint chain usable: {glue:text}`ch09_div_clip` of its {glue:text}`ch09_n_clip` runs
# diverged, against {glue:text}`ch09_div_plain` of the plain step's {glue:text}`ch09_n_plain` (after
# {glue:text}`ch09_reach_lo` to {glue:text}`ch09_reach_hi` updates). On the far target it also removes the earlier
# joint setting's error: cancelling the noise while $z$ moves gave the light mode
# {glue:text}`ch09_old_lo:.1f` to {glue:text}`ch09_old_hi:.1f` times its weight, the bias of chapter 4's section 4.1 at
# full size, while the plain step within its trust region keeps it within {glue:text}`ch09_clip_dev` of its
# weight in every seed, nearer with $\gamma_z = 0.02$ than with 0.05 (on average {glue:text}`ch09_off_clip2:.3f`
# against {glue:text}`ch09_off_clip:.3f` from it); on the other two targets the two steps reach the same TV within
# the spread. But neither beats the frozen-$z$ chain: on `far` their TV is the same within the seeds'
# spread, on `irregular` and `grid25` it is higher, and each update costs more (a generator forward and
# vector-Jacobian product per Langevin step: {glue:text}`ch09_more_fwd` more generator forwards per update
# at $K = 8$). Without the trust region, $\gamma_z = 0.02$ was stable on `far` and
# `irregular` but diverged on `grid25` in every seed; with it, the light mode of `far` sits somewhat
# under its weight. Section 4.2 finds why the step blows up, and a step that is stable without the limit.
#
# ### 4.2 A $z$ step scaled by the Jacobian, with a Metropolis test
#
# Section 4's curvature bound says where the plain step fails. Near a teacher mode of width $\omega_k$
# the curvature of $-\log\rho$ in $z$ is about $\alpha^2 \|J\|^2 / (\sigma^2 + \alpha^2 \omega_k^2)$: at high SNR,
# near a narrow mode, it grows with the generator's Jacobian, and once a fixed step exceeds
# $2/\text{curvature}$ every chain step multiplies the error (section 4.1's plain step of 0.02 on
# `grid25` is such a case). The teacher's
# part of the curvature is bounded by $1/\sigma^2$, which suggests the step
# $\gamma_z / (1 + \alpha^2 \|J\|^2/\sigma^2)$ per sample, with $\|J\|$ from two power iterations of
# vector-Jacobian products (`LangevinConfig(z_precondition="jacobian")`). A step this large is stable
# but no longer small, and an unadjusted Langevin step of that size is biased (for a unit Gaussian
# with step $h$ its stationary variance is $1/(1 - h/2)$). A Metropolis test on the joint
# $(\epsilon, z)$ removes that bias (`metropolis=True`, MALA): neither network gives $\log\rho$, so
# the log-ratio is the trapezoid rule of the score along the move, exact for a Gaussian target. It
# costs one more gradient evaluation per chain. The sweep (`python -m emd_lib experiment ch04
# --sweep joint --mixture NAME`, three seeds, 1000 updates, width 128, $K = 8$) compares these
# with the chains above; `--equal-time` gives $(\epsilon, -)$ and Diff-Instruct the seconds of the
# recommended chain, its cost timed in turns with theirs.

# %%
joint = {m: sweeps.load_sweep(f"joint_{m}") for m in ("far", "irregular", "grid25")}
REC = "(eps, z) mala jacobian 1"
for m, res in joint.items():
    display(sweeps.sweep_table(res, keys=("tv", "within_3sd", "recall"), title=m))
lang_rec = joint["far"]["variants"][REC]["langevin"]
print("the recommended chain, JOINT_CHAIN:", {k: lang_rec[k] for k in emd_lib.langevin.JOINT_CHAIN})
light_j = sweeps.light_masses(joint["far"])
finite = {n: sum(not r["diverged"] for m in joint for r in joint[m]["runs"].get(n, [])) for n in joint["far"]["runs"]}
n_runs = {n: sum(len(joint[m]["runs"].get(n, [])) for m in joint) for n in joint["far"]["runs"]}
shown = (REC, "(eps, z) jacobian 1", "(eps, z) none 0.02 clip 0.1", "(eps, z) none 0.02", "(eps, -)", "DI")
light_txt = {n: f"{np.mean(light_j[n]):.3f} ± {np.std(light_j[n], ddof=1):.3f}" for n in shown}
display(table([[n, f"{finite[n]} of {n_runs[n]}", light_txt[n]] for n in shown],
              ["chain", "finite runs, three targets", f"far's light mode (weight {far_w:.2f})"]))
for key, n in (("rec", REC), ("jac", "(eps, z) jacobian 1"), ("clip", "(eps, z) none 0.02 clip 0.1")):
    glue(f"ch09_light_{key}", light_txt[n])
acc = [r["mean_accept"] for m in joint for r in joint[m]["runs"][REC]]
glue("ch09_acc_lo", min(acc), fmt=".0%")
glue("ch09_acc_hi", max(acc), fmt=".0%")
for key, n in (("rec", REC), ("clip", "(eps, z) none 0.02 clip 0.1")):
    glue(f"ch09_moved_{key}", np.mean([r["mean_moved_z"] for r in joint["far"]["runs"][n]]), fmt=".2f")
assert finite[REC] == n_runs[REC]
assert abs(np.mean(light_j[REC]) - far_w) < np.std(light_j[REC], ddof=1)          # the light mode at its weight
assert all(joint[m]["summary"][REC]["tv"][0] > joint[m]["summary"]["(eps, -)"]["tv"][0] for m in ("irregular", "grid25"))
eq = ["(eps, -) @ time of " + REC, "DI @ time of " + REC]
assert all(joint[m]["summary"][n]["tv"][0] < joint[m]["summary"][REC]["tv"][0] for m in joint for n in eq)
table([[m] + [joint[m]["summary"][n]["tv"][0] for n in [REC] + eq] for m in joint],
      ["target", REC, "(eps, -), its seconds", "DI, its seconds"], fmt="{:.3f}",
      title="TV at the recommended chain's seconds")

# %% [markdown]
# The Jacobian-scaled, Metropolis-adjusted step is what `JOINT_CHAIN` now holds (`--move-z` on the toy
# command): it stayed finite in every run on the three targets and put the far target's light mode
# at its weight, within the seeds' spread ({glue:text}`ch09_light_rec`), where the same step without the
# Metropolis test under-weights it badly ({glue:text}`ch09_light_jac`) and the trust region somewhat
# ({glue:text}`ch09_light_clip`). The Metropolis test accepted {glue:text}`ch09_acc_lo` to {glue:text}`ch09_acc_hi`
# of the moves (mean per run), and the chain moves $z$ further per E-step than the trust region
# (a mean $|z^K - z^0|$ of {glue:text}`ch09_moved_rec:.2f` against {glue:text}`ch09_moved_clip:.2f` on `far`). It still does not beat the
# frozen-$z$ chain: on `irregular` and `grid25` its TV is higher at equal updates, one of its steps
# costs several $(\epsilon, -)$ steps, and given the same seconds $(\epsilon, -)$ and Diff-Instruct reach a
# lower TV on all three targets (the last table). So $(\epsilon, -)$ stays the library's default, and the joint chain is the
# option to use where moving $z$ matters: chapter 5's linear generator, whose frozen-$z$ chain cannot
# leave the mode its latents map to. What we have not shown is that it carries over to images: the
# trapezoid rule is exact only for a Gaussian target, and chapter 7's joint-chain student was
# distilled with the trust region of section 4.1.

# %%
print(f"chapter run time: {time.perf_counter() - t_start:.1f} s")


# %% [markdown]
# ## Summary
#
# You can now:
#
# * bound a stable $z$ step by the curvature of $-\log \rho$ in $z$: at or below 1 for two broad
#   Gaussians, far larger at high SNR for a mixture with narrow modes, which is why a plain $z$ step
#   must be small and why dividing it by $1 + \text{SNR}$ allows a base step ten times larger;
# * tell a stable step from a fast chain: the SNR-scaled $(x, z)$ chain is stable but needs
#   {glue:text}`ch09_per_snr_lo` to {glue:text}`ch09_per_snr_hi` times the SNR in steps along its slowest direction;
# * trace a chain's discretisation bias with exact covariances: the $(x, z)$ chain's $z$ step pulls the
#   fitted slope in ({glue:text}`ch09_shrink_stat` at our steps), the $(\epsilon, z)$ chain keeps $\mathbb E[\epsilon^K \mid z^K] = 0$
#   at the fit for any step;
# * read the four-way table: in 2D both chains in $\epsilon$ work, $(\epsilon, -)$ agrees with Diff-Instruct
#   within the seeds' spread, both chains in $x$ with a fixed step are worse, and moving $z$ did not help;
# * make the joint chain usable with a network generator: scale the $z$ step by the generator's
#   Jacobian so the teacher's curvature cannot make it unstable, and Metropolis-adjust the joint step
#   so that the large step is unbiased; in 2D it is stable everywhere and unbiased on `far`, but its
#   TV is no better than the frozen-$z$ chain's, so $(\epsilon, -)$ stays the default.
