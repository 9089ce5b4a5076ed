"""hmm_regime's training workers log as the service does, without hmmlearn's "not converging" noise."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor

import pytest

from regimes.synthetic import regime_switching_market
from services.hmm_regime.trainer import _fit, _worker_start
from shared.domain.config import HmmConfig
from shared.domain.hmm import TrainedModel, fit_model


def rows() -> tuple[tuple[int, float, float], ...]:
    # The first 2,000 of seed 2's 4,000 bars: EM under the sticky prior lowers the likelihood on a step.
    m = regime_switching_market(4000, seed=2)
    bars = zip(m.closes[:2000], m.volumes[:2000], strict=True)
    return tuple((i * 60_000, float(c), float(v)) for i, (c, v) in enumerate(bars))


def test_this_fit_is_one_hmmlearn_warns_about(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="hmmlearn")  # whatever an offline command quieted before
    data = rows()
    fit_model([c for _, c, _ in data], [v for _, _, v in data], HmmConfig(), None, 0)
    assert any("not converging" in r.getMessage() for r in caplog.records if r.name.startswith("hmmlearn"))


def test_a_worker_logs_json_as_the_service_and_drops_hmmlearns_convergence_warning(
    capfd: pytest.CaptureFixture[str],
) -> None:
    with ProcessPoolExecutor(
        max_workers=1,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_worker_start,
        initargs=(os.getpid(), "INFO", True),
    ) as pool:
        model = pool.submit(_fit, rows(), HmmConfig(), None, 0).result(timeout=120)
        pool.submit(_log_from_worker).result(timeout=30)
    assert isinstance(model, TrainedModel)
    err = capfd.readouterr().err
    assert "not converging" not in err
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert {"level": "warning", "service": "hmm_regime", "msg": "from the worker"}.items() <= lines[-1].items()


def _log_from_worker() -> None:
    logging.getLogger("hmm_regime").warning("from the worker")
