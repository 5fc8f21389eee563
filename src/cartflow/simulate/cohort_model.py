"""Patient-level model of a synthetic CAR-T cohort: clinical course, kinetics and blood counts.

Every quantity here is a *true* value (cells/µL of blood, days after infusion); the event-level
simulation in :mod:`cartflow.simulate.acquire` samples FCS files from it. Each patient draws
from its own random stream, so a patient is the same whatever the cohort size.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import date, timedelta

import numpy as np

LYMPH = "leukocytes/lymphocytes"
SUBSETS = ("naive", "SCM", "CM", "EM", "TEMRA")
T_ARMS = ("CAR", "CARneg")
T_LINEAGES = ("CD4", "CD8")

CELL_POPULATIONS: tuple[str, ...] = (
    "leukocytes/granulocytes",
    "leukocytes/monocytes",
    f"{LYMPH}/CD3neg/CD19",
    f"{LYMPH}/CD3neg/CD19neg",
    *(f"{LYMPH}/CD3/{arm}/{lin}/{sub}" for arm in T_ARMS for lin in T_LINEAGES for sub in SUBSETS),
    f"{LYMPH}/CD3/CAR/DN",
    f"{LYMPH}/CD3/CARneg/DN",
)
"""Biological leaves, at full resolution (tubes report them truncated to what they resolve)."""

PARTICLES: tuple[str, ...] = ("debris", "dead", "doublets")
"""Non-leukocyte events that scale with the blood volume acquired, like cells."""

FUNCTION_MARKS: tuple[str, ...] = ("PD1", "LAG3", "CD71", "Ki67", "TCRgd")

STUDY_START = date(2023, 1, 9)
ACCRUAL_DAYS = 600
DATA_CUTOFF = date(2025, 12, 31)
LEUKAPHERESIS_DAY = -30
_MONTH_DAYS = {3: 90, 6: 180, 12: 365}
_TIMEPOINT = re.compile(r"^(?:(?P<d>D)(?P<day>-?\d+)|(?P<m>M)(?P<month>\d+)|(?P<la>LA))$")

_SURNAMES = (
    "DOE", "ROE", "MUSTERMANN", "ROSSI", "DUPONT", "NOWAK", "JANSSEN", "SILVA",
    "NIELSEN", "KOWALSKI", "SMITH", "MARTIN", "BRAUN", "ESPOSITO", "GARCIA", "PETROV",
)  # fmt: skip
_GIVEN = ("JANE", "JOHN", "ERIKA", "MAX", "ANNA", "LUCA", "MARIE", "PAUL", "SOFIA", "JONAS")

_CELL_INDEX = {name: i for i, name in enumerate(CELL_POPULATIONS)}


def nominal_day(label: str) -> int:
    """Nominal day after infusion of a timepoint label: D7 → 7, M3 → 90, M12 → 365, LA → -30."""
    match = _TIMEPOINT.match(label)
    if not match:
        raise ValueError(f"timepoint label {label!r} is not Dn, Mn or LA")
    if match["day"] is not None:
        return int(match["day"])
    if match["month"] is not None:
        months = int(match["month"])
        return _MONTH_DAYS.get(months, months * 30)
    return LEUKAPHERESIS_DAY


@dataclass(frozen=True)
class CohortEffects:
    """Effect sizes linking bridging, tumour burden, CAR-T expansion, memory phenotype and EFS."""

    ino_fraction: float = 0.5  # share of patients bridged with inotuzumab (else chemo)
    ino_burden_factor: float = 0.3  # residual marrow blasts after InO relative to chemo
    ino_peak_factor: float = 0.5  # CAR-T peak multiplier under InO
    ino_scm_factor: float = 1.5  # SCM fraction (of CD8 CAR-T) multiplier under InO
    burden_peak_slope: float = 0.25  # log10 peak per log10 residual blasts (antigen drive)
    non_expander_fraction: float = 0.15
    persistence_fraction: float = 0.6  # expanders whose CAR-T persist (B-cell aplasia)
    high_burden_pct: float = 5.0  # residual marrow blasts at or above this count as high
    hr_high_burden: float = 2.5
    low_scm_fraction: float = 0.05  # SCM fraction of CD8 CAR-T at peak below this is low
    hr_low_scm: float = 2.0
    hr_non_expander: float = 2.0
    median_efs_days: float = 1400.0  # reference group: low burden, high SCM, expander
    efs_weibull_shape: float = 0.8
    cd19_negative_with_aplasia: float = 0.6  # P(CD19- relapse) when relapsing under aplasia
    cd19_negative_without: float = 0.1


@dataclass(frozen=True)
class PatientModel:
    """One patient's true parameters; methods give true blood counts on any day."""

    index: int
    patient: str
    src_name: str
    infusion_date: date
    bridging: str
    burden_before_pct: float
    burden_after_pct: float
    platelets_per_nl: float
    haemoglobin_g_dl: float
    crp_mg_l: float
    expander: bool
    peak: float
    peak_day: float
    k_up: float
    fast_fraction: float
    k_fast: float
    k_slow: float
    persistent: bool
    loss_day: float
    scm_peak: float
    cd8_car_fraction: float
    cd8_endog_fraction: float
    bystander: float
    gran_base: float
    gran_floor: float
    gran_tau: float
    mono_base: float
    t_la: float
    t_nadir: float
    t_late: float
    t_tau: float
    nk_la: float
    nk_nadir: float
    nk_late: float
    b_la: float
    b_residual: float
    b_max: float
    b_recovery_day: float
    debris_base: float
    debris_fraction: float
    dead_fraction: float
    doublet_fraction: float
    hazard_ratio: float
    relapse_day: float
    cd19_negative_relapse: bool
    death_day: float
    hsct_day: float
    followup_days: int

    # --- kinetics ------------------------------------------------------------------------
    def car_t(self, day: float) -> float:
        """True CAR-T cells/µL on a day after infusion."""
        t = float(day)
        if t <= 0:
            return 0.0
        if t <= self.peak_day:
            value = self.peak * math.exp(-self.k_up * (self.peak_day - t))
        else:
            after = t - self.peak_day
            value = self.peak * (
                self.fast_fraction * math.exp(-self.k_fast * after)
                + (1 - self.fast_fraction) * math.exp(-self.k_slow * after)
            )
        if t > self.loss_day:
            value *= math.exp(-(t - self.loss_day) / 5.0)
        return value if value >= 1e-6 else 0.0

    def _late(self, day: float, tau: float = 60.0) -> float:
        return 1.0 - math.exp(-max(day - self.peak_day, 0.0) / tau)

    def scm_fraction(self, day: float) -> float:
        """True SCM share of CD8 CAR-T cells: the product's share early, rising in memory."""
        if day < self.peak_day:
            factor = 1.0 + 0.5 * (self.peak_day - day) / self.peak_day
        else:
            factor = 1.0 + self._late(day)
        return min(self.scm_peak * factor, 0.45)

    def _gran(self, day: float) -> float:
        if day < 0:
            return self.gran_base
        recovery = 1.0 - math.exp(-max(day - 5.0, 0.0) / self.gran_tau)
        return self.gran_base * (self.gran_floor + (1 - self.gran_floor) * recovery)

    def _b_cells(self, day: float) -> float:
        if day < 0:
            return self.b_la
        if day < self.b_recovery_day:
            return self.b_residual
        return self.b_residual + self.b_max * (1 - math.exp(-(day - self.b_recovery_day) / 45.0))

    def concentrations(self, day: float) -> np.ndarray:
        """True cells/µL of CELL_POPULATIONS followed by PARTICLES on a day."""
        c = np.zeros(len(CELL_POPULATIONS) + len(PARTICLES))
        car = self.car_t(day)
        c[_CELL_INDEX["leukocytes/granulocytes"]] = self._gran(day)
        c[_CELL_INDEX["leukocytes/monocytes"]] = self.mono_base * self._gran(day) / self.gran_base
        c[_CELL_INDEX[f"{LYMPH}/CD3neg/CD19"]] = self._b_cells(day)
        if day < 0:
            nk, t_endog = self.nk_la, self.t_la
        else:
            nk = self.nk_nadir + (self.nk_late - self.nk_nadir) * (
                1 - math.exp(-max(day - 3.0, 0.0) / 20.0)
            )
            t_endog = self.t_nadir + (self.t_late - self.t_nadir) * (
                1 - math.exp(-max(day - 5.0, 0.0) / self.t_tau)
            )
            t_endog += self.bystander * car
        c[_CELL_INDEX[f"{LYMPH}/CD3neg/CD19neg"]] = nk
        for arm, total in (("CAR", car), ("CARneg", t_endog)):
            for lineage, share, subsets in self._t_split(arm, day):
                if subsets is None:
                    c[_CELL_INDEX[f"{LYMPH}/CD3/{arm}/DN"]] = total * share
                    continue
                for sub, fraction in zip(SUBSETS, subsets, strict=True):
                    c[_CELL_INDEX[f"{LYMPH}/CD3/{arm}/{lineage}/{sub}"]] = total * share * fraction
        wbc = c[: len(CELL_POPULATIONS)].sum()
        n = len(CELL_POPULATIONS)
        c[n] = self.debris_base + self.debris_fraction * wbc
        c[n + 1] = self.dead_fraction * wbc
        c[n + 2] = self.doublet_fraction * wbc
        return c

    def _t_split(self, arm: str, day: float):
        """(lineage, share of the arm, subset fractions or None for DN) for CAR or CARneg T."""
        late = self._late(day)
        dn = 0.03 if arm == "CAR" else 0.04
        if arm == "CAR":
            cd8 = min(self.cd8_car_fraction + 0.1 * late, 0.9)
            scm = self.scm_fraction(day)
            cd8_subsets = (0.005, scm, 0.12 + 0.2 * late, None, 0.25)
            cd4_subsets = (0.01, min(1.2 * scm, 0.45), 0.3 + 0.15 * late, None, 0.04)
        else:
            recovered = 1 - math.exp(-max(day, 0.0) / 120.0) if day >= 0 else 1.0
            cd8 = self.cd8_endog_fraction
            cd8_subsets = (0.12 + 0.15 * recovered, 0.025, 0.12, None, 0.3)
            cd4_subsets = (0.2 + 0.15 * recovered, 0.025, 0.35, None, 0.05)
        return (
            ("CD8", (1 - dn) * cd8, _with_em(cd8_subsets)),
            ("CD4", (1 - dn) * (1 - cd8), _with_em(cd4_subsets)),
            ("DN", dn, None),
        )

    def mark_probabilities(self, day: float) -> np.ndarray:
        """P(positive) of each FUNCTION_MARKS marker for every CELL_POPULATIONS row."""
        p = np.zeros((len(CELL_POPULATIONS), len(FUNCTION_MARKS)))
        activation = math.exp(-max(day - self.peak_day, 0.0) / 21.0) if day > 0 else 0.0
        early = math.exp(-max(day, 0.0) / 30.0) if day >= 0 else 0.0
        car = (0.1 + 0.4 * activation, 0.05 + 0.35 * activation,
               0.03 + 0.5 * activation, 0.03 + 0.6 * activation)  # fmt: skip
        endog = (0.15 + 0.15 * early, 0.01 + 0.04 * early,
                 0.01 + 0.07 * early, 0.03 + 0.17 * early)  # fmt: skip
        gd = {"CD4": 0.003, "CD8": 0.02, "DN": 0.6}
        for i, name in enumerate(CELL_POPULATIONS):
            parts = name.split("/")
            if len(parts) < 5 or parts[2] != "CD3":
                continue
            p[i, :4] = car if parts[3] == "CAR" else endog
            p[i, 4] = gd[parts[4]]
        return p


def _with_em(fractions: tuple[float | None, ...]) -> tuple[float, ...]:
    """Fill the EM slot with what the other subsets leave (at least 2 %) and normalise."""
    known = sum(f for f in fractions if f is not None)
    filled = np.array([max(1.0 - known, 0.02) if f is None else f for f in fractions])
    return tuple(filled / filled.sum())


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(10 ** rng.uniform(math.log10(low), math.log10(high)))


def draw_patient(seed: int, index: int, effects: CohortEffects) -> PatientModel:
    """Draw patient ``index`` (0-based) from its own random stream of ``seed``."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1, index)))
    ino = bool(rng.random() < effects.ino_fraction)
    burden_before = float(10 ** rng.uniform(0.0, math.log10(95.0)))
    reduction = rng.uniform(0.1, 1.0) * (effects.ino_burden_factor if ino else 1.0)
    burden_after = round(burden_before * reduction, 2)
    burden_before = round(burden_before, 2)
    high_burden = burden_after >= effects.high_burden_pct

    expander = bool(rng.random() >= effects.non_expander_fraction)
    if expander:
        log_peak = rng.uniform(0.0, math.log10(20_000.0))
        log_peak += effects.burden_peak_slope * (
            math.log10(burden_after + 0.1) - math.log10(effects.high_burden_pct)
        )
        peak = 10**log_peak * (effects.ino_peak_factor if ino else 1.0)
    else:
        peak = _log_uniform(rng, 0.1, 5.0)
    peak_day = rng.uniform(7.0, 14.0)
    persistent = bool(rng.random() < (effects.persistence_fraction if expander else 0.15))
    if persistent:
        loss_day = math.inf
        k_slow = math.log(2) / rng.uniform(60.0, 300.0)
    else:
        loss_day = rng.uniform(45.0, 200.0) if expander else rng.uniform(20.0, 60.0)
        k_slow = math.log(2) / rng.uniform(20.0, 60.0)
    scm_peak = min(
        float(10 ** rng.normal(math.log10(0.04), 0.25)) * (effects.ino_scm_factor if ino else 1.0),
        0.4,
    )
    if not persistent:
        b_recovery = loss_day + rng.uniform(14.0, 60.0)
    elif rng.random() < 0.15:
        b_recovery = rng.uniform(150.0, 330.0)
    else:
        b_recovery = math.inf

    hazard = (
        (effects.hr_high_burden if high_burden else 1.0)
        * (effects.hr_low_scm if scm_peak < effects.low_scm_fraction else 1.0)
        * (1.0 if expander else effects.hr_non_expander)
    )
    shape = effects.efs_weibull_shape
    scale = effects.median_efs_days / math.log(2) ** (1 / shape)
    relapse = scale * (rng.exponential() / hazard) ** (1 / shape)
    non_relapse_death = rng.exponential(4000.0)
    death_after_relapse = relapse + max(rng.exponential(150.0), 7.0)
    dies_after_relapse = rng.random() < 0.6
    under_aplasia = relapse < b_recovery
    cd19neg = rng.random() < (
        effects.cd19_negative_with_aplasia if under_aplasia else effects.cd19_negative_without
    )
    consolidation = rng.uniform(60.0, 150.0) if rng.random() < 0.2 else math.inf
    salvage = relapse + rng.uniform(40.0, 100.0) if rng.random() < 0.4 else math.inf
    infusion = STUDY_START + timedelta(days=int(rng.integers(0, ACCRUAL_DAYS)))
    followup = (DATA_CUTOFF - infusion).days

    if relapse < non_relapse_death:
        death = death_after_relapse if dies_after_relapse else non_relapse_death
        hsct = consolidation if consolidation < relapse else salvage
    else:
        relapse, death, hsct = math.inf, non_relapse_death, consolidation
    if hsct >= death:
        hsct = math.inf
    relapse, death, hsct = (x if x <= followup else math.inf for x in (relapse, death, hsct))

    gran_base = _log_uniform(rng, 1500.0, 5000.0)
    return PatientModel(
        index=index,
        patient=f"CART-{index + 1:03d}",
        src_name=(
            f"{_SURNAMES[rng.integers(len(_SURNAMES))]}^{_GIVEN[rng.integers(len(_GIVEN))]} "
            f"{rng.integers(1950, 2006)}"
        ),
        infusion_date=infusion,
        bridging="InO" if ino else "chemo",
        burden_before_pct=burden_before,
        burden_after_pct=burden_after,
        platelets_per_nl=round(_log_uniform(rng, 15.0, 250.0), 0),
        haemoglobin_g_dl=round(rng.uniform(7.5, 12.5), 1),
        crp_mg_l=round(_log_uniform(rng, 1.0, 20.0) * (1 + burden_after / 20), 1),
        expander=expander,
        peak=float(peak),
        peak_day=float(peak_day),
        k_up=rng.uniform(0.4, 0.9),
        fast_fraction=rng.uniform(0.9, 0.99),
        k_fast=math.log(2) / rng.uniform(4.0, 10.0),
        k_slow=k_slow,
        persistent=persistent,
        loss_day=float(loss_day),
        scm_peak=scm_peak,
        cd8_car_fraction=rng.uniform(0.35, 0.75),
        cd8_endog_fraction=rng.uniform(0.3, 0.6),
        bystander=rng.uniform(2.4, 4.0),
        gran_base=gran_base,
        gran_floor=rng.uniform(0.05, 0.5),
        gran_tau=rng.uniform(7.0, 30.0),
        mono_base=gran_base * rng.uniform(0.08, 0.15),
        t_la=_log_uniform(rng, 300.0, 1500.0),
        t_nadir=_log_uniform(rng, 20.0, 200.0),
        t_late=_log_uniform(rng, 300.0, 1200.0),
        t_tau=rng.uniform(60.0, 200.0),
        nk_la=_log_uniform(rng, 80.0, 300.0),
        nk_nadir=_log_uniform(rng, 10.0, 80.0),
        nk_late=_log_uniform(rng, 100.0, 300.0),
        b_la=_log_uniform(rng, 5.0, 300.0),
        b_residual=_log_uniform(rng, 0.005, 0.05),
        b_max=_log_uniform(rng, 50.0, 400.0),
        b_recovery_day=float(b_recovery),
        debris_base=_log_uniform(rng, 30.0, 300.0),
        debris_fraction=rng.uniform(0.05, 0.35),
        dead_fraction=rng.uniform(0.01, 0.08),
        doublet_fraction=rng.uniform(0.01, 0.04),
        hazard_ratio=hazard,
        relapse_day=float(relapse),
        cd19_negative_relapse=bool(cd19neg and math.isfinite(relapse)),
        death_day=float(death),
        hsct_day=float(hsct),
        followup_days=followup,
    )


def day_to_date(patient: PatientModel, day: float) -> date | None:
    """Calendar date of a (whole) day after infusion; None for no event (inf)."""
    if not math.isfinite(day):
        return None
    return patient.infusion_date + timedelta(days=round(day))


def sample_days(seed: int, patient: PatientModel, labels: tuple[str, ...]) -> dict[str, int]:
    """Actual sample day of each timepoint: nominal ± 1–2 days, strictly increasing.

    Timepoints falling after death or the data cutoff are left out.
    """
    days: dict[str, int] = {}
    previous = -(10**6)
    for label in sorted(labels, key=nominal_day):
        nominal = nominal_day(label)
        rng = np.random.default_rng(
            np.random.SeedSequence(seed, spawn_key=(2, patient.index, nominal + 1000))
        )
        spread = 1 if 0 <= nominal <= 28 else 2
        actual = max(nominal + int(rng.integers(-spread, spread + 1)), previous + 1)
        if nominal > 0:
            actual = max(actual, 1)
        previous = actual
        if actual >= patient.death_day or actual > patient.followup_days:
            continue
        days[label] = actual
    return days
