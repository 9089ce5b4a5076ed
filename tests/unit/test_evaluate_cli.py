"""``regimes evaluate`` end to end on a small candle file: its files, self-contained, from backtest's events.

The command runs in-process through ``regimes.cli.main`` (as the console
script does), with a config of short windows so that 700 one-minute bars see
every vol regime machinery and a few HMM trainings in a couple of seconds.
"""

from __future__ import annotations

import base64
import json
import re
import struct
import sys
import zlib
from pathlib import Path
from typing import Any

import pytest

from regimes import cli, report
from services.ohlcv_ingest.files import write_freqtrade
from shared.domain.contracts import HmmRegimeEvent, ScreenerDecision, VolRegimeEvent, to_plain
from shared.domain.subjects import SeriesKey
from tests.factories import DAY0, demo_candles
from tests.harness import SMALL_VOL

BARS = 700
CONFIG = {
    "universe": [{"exchange": "file", "symbol": "BTC/USD", "timeframe": "1m", "tier": "CORE"}],
    "sizing": {"per_trade_nav_pct": 0.02},
    "vol_regimes": SMALL_VOL,
    "trend": {"fast_ema_bars": 3, "slow_ema_bars": 8, "score_scale": 0.004},
    "hmm": {
        "HMM_ENABLED": True,
        "HMM_TRAINING_CANDLES": 300,
        "HMM_MIN_TRAIN_SAMPLES": 200,
        "HMM_RETRAIN_INTERVAL_SEC": 9000.0,  # every 150 bars of candle time
        "HMM_N_ITER": 20,
    },
}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A freqtrade-named candle file of the demo market, and the config."""
    d = tmp_path_factory.mktemp("evaluate")
    candles = demo_candles(BARS, key=SeriesKey("file", "BTC/USD", "1m"), seed=11, start_ts=DAY0)
    candle_file = d / "BTC_USD-1m.json"
    write_freqtrade(candle_file, candles, "json")
    config = d / "config.json"
    config.write_text(json.dumps(CONFIG))
    return candle_file, config


def run_cli(*argv: str) -> int:
    with pytest.raises(SystemExit) as done:
        cli.main(list(argv))
    return int(done.value.code or 0)


@pytest.fixture(scope="module")
def evaluated(inputs: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One run of the command; what it wrote, and the events it judged (caught on their way to the report)."""
    candle_file, config = inputs
    out = tmp_path_factory.mktemp("report")
    seen: list[Any] = []
    original = report.write_series

    def spy(events: Any, out_dir: Path) -> Any:
        seen.extend(events)
        return original(events, out_dir)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(report, "write_series", spy)
        code = run_cli("evaluate", str(candle_file), "--config", str(config), "--out", str(out))
    return {"code": code, "out": out, "events": seen}


def test_the_report_has_an_index_a_page_and_a_chart_per_series(evaluated: dict[str, Any]) -> None:
    assert evaluated["code"] == 0
    names = sorted(p.name for p in evaluated["out"].iterdir())
    assert names == ["file_BTC-USD_1m.html", "file_BTC-USD_1m.png", "index.html"]


def test_every_page_is_self_contained(evaluated: dict[str, Any]) -> None:
    for page in ("index.html", "file_BTC-USD_1m.html"):
        text = (evaluated["out"] / page).read_text()
        prose = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "data:", text)  # base64 may hold "//"
        assert not re.search(r"(?i)(https?:)?//[a-z0-9]", prose), page
        for attr, value in re.findall(r'\b(src|href)="([^"]*)"', text):
            if attr == "src":
                assert value.startswith("data:image/png;base64,"), value[:40]
            else:
                assert re.fullmatch(r"[\w.-]+\.html", value), value  # only the report's own pages
        assert "@import" not in text
        assert "url(" not in text


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """A PNG's chunks, each CRC checked; AssertionError if it is not a well-formed PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, i = [], 8
    while i < len(data):
        (length,) = struct.unpack(">I", data[i : i + 4])
        kind, body = data[i + 4 : i + 8], data[i + 8 : i + 8 + length]
        (crc,) = struct.unpack(">I", data[i + 8 + length : i + 12 + length])
        assert zlib.crc32(kind + body) == crc, kind
        chunks.append((kind, body))
        i += 12 + length
    assert chunks[0][0] == b"IHDR"
    assert chunks[-1][0] == b"IEND"
    return chunks


def test_the_chart_is_a_valid_png_and_the_page_embeds_the_same_one(evaluated: dict[str, Any]) -> None:
    data = (evaluated["out"] / "file_BTC-USD_1m.png").read_bytes()
    chunks = png_chunks(data)
    width, height = struct.unpack(">II", chunks[0][1][:8])
    assert width > 800
    assert height > 400
    pixels = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    assert len(pixels) > width * height  # at least a byte per pixel: the image data is all there
    page = (evaluated["out"] / "file_BTC-USD_1m.html").read_text()
    [embedded] = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert base64.b64decode(embedded) == data


def test_the_page_shows_every_block_of_the_evaluation(evaluated: dict[str, Any]) -> None:
    page = (evaluated["out"] / "file_BTC-USD_1m.html").read_text()
    for heading in ("Volatility regimes", "HMM regimes", "Bias sign vs forward return",
                    "Transitions: raw vs confirmed", "Sizing in force vs flat"):
        assert f">{heading}<" in page, heading
    for label in ("low", "normal", "high", "crisis", "BEARISH", "RANGING", "BULLISH"):
        assert f"</i>{label}</td>" in page, label
    for h in ("1 bar ahead", "5 bars ahead", "20 bars ahead"):
        assert h in page
    # The events carry raw labels beside the confirmed ones: the page compares them.
    assert "Suppressed is the share of raw flips confirmation removed" in page
    assert "carry no raw label" not in page
    index = (evaluated["out"] / "index.html").read_text()
    assert 'href="file_BTC-USD_1m.html"' in index
    assert f"{BARS:,} candles" in index


def test_the_events_evaluated_are_exactly_what_regimes_backtest_gives_for_the_same_file(
    evaluated: dict[str, Any], inputs: tuple[Path, Path], tmp_path: Path
) -> None:
    candle_file, config = inputs
    out = tmp_path / "events.jsonl"
    assert run_cli("backtest", str(candle_file), "--config", str(config), "--out", str(out)) == 0
    backtested = [json.loads(line) for line in out.read_text().splitlines()]
    evaluated_events = [to_plain(e) for e in evaluated["events"]]
    assert evaluated_events == backtested
    kinds = {type(e) for e in evaluated["events"]}
    assert kinds == {VolRegimeEvent, HmmRegimeEvent, ScreenerDecision}
    assert any(isinstance(e, HmmRegimeEvent) and e.trained for e in evaluated["events"])  # trainings happened


def test_progress_goes_to_stderr_as_bars_done_of_total_with_a_rate(
    inputs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    candle_file, config = inputs
    assert run_cli("evaluate", str(candle_file), "--config", str(config), "--out", str(tmp_path / "r")) == 0
    err = capsys.readouterr().err
    assert f"{BARS}/{BARS} candles" in err
    assert re.search(r"\d[\d,]*/s", err)
    assert "HMM trainings" in err
    assert "replay" in err


def test_without_matplotlib_the_command_says_how_to_install_it_and_writes_nothing(
    inputs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    candle_file, config = inputs
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    out = tmp_path / "r"
    assert run_cli("evaluate", str(candle_file), "--config", str(config), "--out", str(out)) == 2
    err = capsys.readouterr().err
    assert "matplotlib" in err
    assert "pip install 'regime-stack[report]'" in err
    assert not out.exists()


def test_with_the_hmm_off_and_two_files_each_series_gets_a_page_without_hmm_blocks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = []
    for symbol in ("ETH/USD", "SOL/USD"):
        candles = demo_candles(300, key=SeriesKey("file", symbol, "1m"), seed=12, start_ts=DAY0)
        path = tmp_path / f"{symbol.replace('/', '_')}-1m.json"
        write_freqtrade(path, candles, "json")
        files.append(str(path))
    config = tmp_path / "config.json"
    config.write_text(json.dumps({**CONFIG, "hmm": {"HMM_ENABLED": False}}))
    out = tmp_path / "r"
    assert run_cli("evaluate", *files, "--config", str(config), "--out", str(out)) == 0
    assert "600/600 candles" in capsys.readouterr().err  # one bar over both files
    index = (out / "index.html").read_text()
    for stem in ("file_ETH-USD_1m", "file_SOL-USD_1m"):
        page = (out / f"{stem}.html").read_text()
        assert ">Volatility regimes<" in page
        assert ">HMM regimes<" not in page
        assert ">Sizing in force vs flat<" in page
        png_chunks((out / f"{stem}.png").read_bytes())
        assert f'href="{stem}.html"' in index


@pytest.mark.parametrize("bars", [1, 2, 3])
def test_a_series_of_a_few_bars_still_gets_its_page_and_chart(bars: int, tmp_path: Path) -> None:
    candles = demo_candles(bars, key=SeriesKey("file", "BTC/USD", "1m"), seed=13, start_ts=DAY0)
    events = report.replay(candles, cli._check(Path(_write_config(tmp_path))), now_ms=DAY0 + 10**12)
    [(ev, stem)] = report.write_series(events, tmp_path / "r")
    assert ev.bars == bars
    png_chunks((tmp_path / "r" / f"{stem}.png").read_bytes())
    assert "—" in (tmp_path / "r" / f"{stem}.html").read_text()  # nothing to measure shows as a dash


def _write_config(tmp_path: Path) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(CONFIG))
    return path
