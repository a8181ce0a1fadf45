"""``python -m research.models.catalog`` streams: each row reaches stdout (flushed) as soon as its model is
counted, with a progress bar on stderr; ``--markdown FILE`` writes the documentation page."""

import io

import pytest

from research.models import catalog


def test_rows_stream_before_the_catalog_is_finished(monkeypatch, capsys):
    real_rows = catalog.rows

    def rows_then_fail(only=None, progress=None):
        it = real_rows('^lenet5$', progress)
        yield next(it)
        raise KeyboardInterrupt  # the user stops it after the first model

    monkeypatch.setattr(catalog, 'rows', rows_then_fail)
    with pytest.raises(KeyboardInterrupt):
        catalog.main([])
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[:2] == list(catalog.TABLE_HEADER)
    assert lines[2].startswith('| `lenet5` | 32x32x1 | 10 | 60,000 | 0.3 M |')
    assert '[....................] 0/1 lenet5' in err


def test_markdown_page_and_progress(tmp_path, capsys):
    out = tmp_path / 'models.md'
    assert catalog.main(['--only', '^lenet5', '--markdown', str(out)]) == 0
    text = out.read_text()
    assert text.startswith(catalog.PAGE_HEADER) and '2 models.' in text
    assert [r['name'] for r in catalog.parse_page(text)] == ['lenet5', 'lenet5_modern']
    err = capsys.readouterr().err
    assert '1/2 lenet5_modern' in err and '2/2 done' in err


def test_bar_redraws_in_place_on_a_terminal():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    s = Tty()
    bar = catalog._Bar(s)
    bar(0, 2, 'a')
    bar(1, 2, 'bb')
    bar.close(2)
    assert s.getvalue().count('\r') == 3 and s.getvalue().endswith('\n') and s.getvalue().count('\n') == 1
