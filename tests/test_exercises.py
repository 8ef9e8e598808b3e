"""Every exercise: the reference solution passes its check, the stub and the known wrong answers fail."""
import re
from pathlib import Path

import jupytext
import pytest

from emd_lib.exercises import ExerciseFailed, check, registry
from emd_lib.book.student import BEGIN, solution_text, strip_solutions

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = sorted((ROOT / "chapters").glob("[0-9][0-9]_*.py"))


def exercise_cells():
    for path in CHAPTERS:
        nb = jupytext.read(path)
        for i, cell in enumerate(nb.cells):
            if cell.cell_type == "code" and BEGIN in cell.source:
                ids = re.findall(r'check\(\s*"([\d.]+)"', cell.source)
                yield pytest.param(cell.source, id=f"{path.stem}-{ids[0] if ids else i}")


CELLS = list(exercise_cells())


@pytest.mark.parametrize("source", CELLS)
def test_reference_passes_and_stub_fails(source, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT / "chapters")
    assert re.search(r'check\(\s*"[\d.]+"', source), "an exercise cell must end with check(\"N.k\", answer)"
    exec(compile(source, "<exercise>", "exec"), {"__name__": "__exercise__"})
    with pytest.raises(ExerciseFailed, match="not answered yet"):
        exec(compile(strip_solutions(source), "<stub>", "exec"), {"__name__": "__exercise__"})


@pytest.mark.parametrize("path", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_each_exercise_heading_is_followed_by_its_own_cell(path):
    """``## Exercise N.k`` is followed by one code cell that holds a solution and calls check("N.k", ...)."""
    cells = jupytext.read(path).cells
    heads = [(i, m.group(1)) for i, c in enumerate(cells) if c.cell_type == "markdown"
             for m in re.finditer(r"^## Exercise (\d+\.\d+):", c.source, re.M)]
    assert heads or "appendix" in path.stem, f"{path.name} has no exercise"   # appendices have none
    for i, ex_id in heads:
        nxt = cells[i + 1] if i + 1 < len(cells) else None
        assert nxt is not None and nxt.cell_type == "code" and BEGIN in nxt.source, f"exercise {ex_id} has no cell"
        assert re.findall(r'check\(\s*"([\d.]+)"', nxt.source) == [ex_id], f"exercise {ex_id}: the cell checks another"


def _registered():
    return sorted(registry().items())


@pytest.mark.parametrize("ex_id, ex", _registered(), ids=[k for k, _ in _registered()])
def test_wrong_answers_fail(ex_id, ex):
    assert ex.wrong, f"exercise {ex_id} registers no wrong answer to prove its check can fail"
    for wrong in ex.wrong:
        with pytest.raises(ExerciseFailed):
            check(ex_id, wrong)


def test_every_check_in_the_chapters_is_registered_and_vice_versa():
    used = set()
    for path in CHAPTERS:
        used |= set(re.findall(r'check\(\s*"([\d.]+)"', path.read_text()))
    assert used == set(registry()), (used, set(registry()))


def test_student_edition_leaks_no_solution():
    for path in CHAPTERS:
        text = path.read_text()
        stripped = strip_solutions(text)
        assert BEGIN not in stripped
        solutions = solution_text(text)
        outside = text
        for sol in solutions:
            outside = outside.replace(sol, "")
        for sol in solutions:
            for line in sol.splitlines():
                line = line.strip()
                # a distinctive line of the solution must not survive (unless the chapter's own text,
                # outside every solution, has it: a from-scratch line of the chapter is not a leak)
                if len(line) > 25 and line not in outside:
                    assert line not in stripped, f"{path.name}: solution line leaks: {line}"


def test_strip_solutions_keeps_indentation():
    src = "def f(x):\n    ### BEGIN SOLUTION\n    return x + 1\n    ### END SOLUTION\ncheck('0.0', f)\n"
    out = strip_solutions(src)
    assert "return x + 1" not in out and "    raise NotImplementedError" in out
    with pytest.raises(ValueError):
        strip_solutions("    ### BEGIN SOLUTION\n x\n")


# ---- what the checks say to a student ------------------------------------------------------------

NAN = float("nan")


@pytest.mark.parametrize("ex_id, answer", [
    ("2.1", lambda w, m, s: (NAN, NAN)),
    ("2.1", lambda w, m, s: ((w * m).sum(), NAN)),
    ("2.2", lambda q_mean, q_std, log_p, n, generator: NAN),
    ("7.3", lambda real, fake, k: NAN),
])
def test_nan_answers_fail(ex_id, answer):
    with pytest.raises(ExerciseFailed):
        check(ex_id, answer)


def test_the_student_frame_stays_in_the_traceback():
    import traceback

    def cosine_lam(t):
        return t / student_typo  # noqa: F821

    with pytest.raises(ExerciseFailed, match="NameError") as info:
        check("1.1", cosine_lam)
    assert isinstance(info.value.__cause__, NameError)
    text = "".join(traceback.format_exception(info.value))
    assert "return t / student_typo" in text and "in cosine_lam" in text


def test_an_answer_that_returns_none_is_told_so():
    def cosine_lam(t):
        lam = -2.0 * t   # computed, never returned  # noqa: F841

    with pytest.raises(ExerciseFailed, match=r"returned None: did you forget `return`\?"):
        check("1.1", cosine_lam)


def test_a_not_implemented_error_of_the_student_is_not_the_stub():
    def cosine_lam(t):
        raise NotImplementedError("complex times are not supported")

    with pytest.raises(ExerciseFailed) as info:
        check("1.1", cosine_lam)
    assert "not answered yet" not in str(info.value)
    assert "NotImplementedError: complex times are not supported" in str(info.value)

    def stub(t):
        exec(strip_solutions("### BEGIN SOLUTION\n### END SOLUTION\n"))

    with pytest.raises(ExerciseFailed, match="not answered yet"):
        check("1.1", stub)


def test_coverage_counts_a_class_exactly_at_the_threshold():
    import torch

    def strict(pred, n_classes, cover_frac):   # '>' where the exercise says "at least"
        share = torch.bincount(pred, minlength=n_classes).double() / len(pred)
        return int((share > cover_frac / n_classes).sum())

    with pytest.raises(ExerciseFailed, match="at least"):
        check("7.2", strict)


def test_hint_of_5_1_does_not_give_the_return_value():
    with pytest.raises(ExerciseFailed) as info:
        check("5.1", lambda eps0, sds, n, gamma: eps0)
    assert "gamma * sds" not in str(info.value)


# ---- the exercises build the method, and the library cannot answer them ------------------------------

from emd_lib.exercises import KINDS  # noqa: E402
from emd_lib.exercises.refuse import MESSAGE  # noqa: E402


def test_the_course_has_enough_exercises_that_build_the_method():
    reg = registry()
    assert len(reg) >= 30
    method = [k for k, ex in reg.items() if ex.kind == "method"]
    assert len(method) >= 8, method
    for ex_id, ex in reg.items():
        assert ex.points > 0 and isinstance(ex.minutes, int) and ex.minutes > 0, ex_id
        assert ex.kind in KINDS, ex_id
        assert ex.forbid and callable(ex.route), f"exercise {ex_id} declares no forbidden functions or no route"
    # every chapter has at least one derivation (a formula or a number the check evaluates)
    for chapter in {k.split(".")[0] for k in reg}:
        assert any(ex.kind == "derivation" for k, ex in reg.items() if k.split(".")[0] == chapter), chapter
    # and the course has an experiment with a measured answer
    assert any(ex.kind == "experiment" for ex in reg.values())


@pytest.mark.parametrize("ex_id, ex", _registered(), ids=[k for k, _ in _registered()])
def test_the_library_route_fails_with_write_it_yourself(ex_id, ex):
    """An answer that just calls the library's own implementation fails, and the message says so."""
    with pytest.raises(ExerciseFailed, match=MESSAGE):
        check(ex_id, ex.route)


def test_the_library_is_restored_after_a_check():
    import emd_lib.em as em
    import emd_lib.teachers as teachers

    before = (em.latent_posterior, teachers.GaussianMixture.__dict__["score"])
    with pytest.raises(ExerciseFailed):
        check("3.1", registry()["3.1"].route)
    with pytest.raises(ExerciseFailed):
        check("1.2", registry()["1.2"].route)
    assert (em.latent_posterior, teachers.GaussianMixture.__dict__["score"]) == before


def test_an_alias_imported_into_the_notebook_is_refused_too():
    ns = {"__name__": "__main__"}
    exec("from emd_lib.em import latent_posterior as lp, gaussian_kl\n"
         "import torch\n"
         "def bound_gap(A, b, x_t, alpha, sigma, m, S):\n"
         "    mu, Sz = lp(A, b, x_t, alpha, sigma)\n"
         "    return torch.tensor([gaussian_kl(m[i], S, mu[i], Sz) for i in range(len(m))])\n", ns)
    with pytest.raises(ExerciseFailed, match=MESSAGE):
        check("3.1", ns["bound_gap"])
    from emd_lib.em import latent_posterior
    assert ns["lp"] is latent_posterior          # put back afterwards


def test_the_loop_cannot_hand_back_the_teachers_samples():
    def distill(teacher, z_eval, steps, seed):
        return teacher.sample(len(z_eval))

    with pytest.raises(ExerciseFailed, match=MESSAGE):
        check("6.4", distill)


def test_check_prints_and_returns_nothing(capsys):
    import torch

    def cosine_lam(t):
        return -2.0 * torch.log(torch.tan(torch.pi * torch.as_tensor(t) / 2))

    assert check("1.1", cosine_lam) is None
    assert "Exercise 1.1: correct" in capsys.readouterr().out


def test_a_checks_own_helpers_do_not_get_round_the_refusal():
    """The checks compute their references with the library; an answer that borrows those helpers
    reaches the refused functions through the student's own frame, and fails."""
    from emd_lib.exercises import ch05

    def emd_loss(generator, teacher, student, z, eps, lam, K, gamma, cancel, noises):
        return ch05._emd_ref(generator, teacher, student, z, eps, lam, K, gamma, cancel, noises)

    with pytest.raises(ExerciseFailed, match=MESSAGE):
        check("5.1", emd_loss)


def test_the_checks_private_references_agree_with_the_library():
    """Where a check computes its reference itself, it agrees with the library's implementation."""
    import torch

    from emd_lib.exercises import ch01, ch04
    from emd_lib.langevin import LangevinConfig, estep
    from emd_lib.mixtures import ring8
    from emd_lib.sampling import ddim_step

    mix = ring8()
    x_t = torch.randn(16, 2, generator=torch.Generator().manual_seed(0))
    ref = ch01._ddim_ref(lambda x, lam: mix.denoise(x, torch.full((len(x),), float(lam))), x_t, -1.0, 2.0)
    torch.testing.assert_close(ref, ddim_step(mix, x_t, -1.0, 2.0), rtol=1e-5, atol=1e-5)

    gen, teacher, student, z, eps, _ = ch04._networks(3)
    lam = torch.full((len(z),), 4.0)
    g = torch.Generator().manual_seed(1)
    n_eps, n_z = torch.randn(z.shape, generator=g), torch.randn(z.shape, generator=g)
    noise = iter([n_eps, n_z])
    res = estep(gen, teacher, student, z, eps, lam,
                LangevinConfig(K=1, move_z=True, z_precondition="none", gamma_eps=0.3, gamma_z=0.05, z_clip=0.1,
                               cancel="injected", cancel_z=True), rng=lambda like: next(noise))
    zero = torch.zeros_like(z)
    z1, e1, h1, hz1 = ch04._step_ref(gen, teacher, student, z, eps, zero, zero, lam, 0.3, 0.05, 0.1, n_eps, n_z)
    for mine, lib in ((z1, res.z_chain), (e1, res.eps_chain), (h1, res.eps_chain - res.eps), (hz1, res.z_chain - res.z)):
        torch.testing.assert_close(mine, lib, rtol=1e-5, atol=1e-5)
