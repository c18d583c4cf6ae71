"""The search pipeline without the CLI: :func:`nas_asc.pipeline.search.run_search` over a
:class:`~nas_asc.pipeline.search.SearchRequest` (the CLI's search tests run it through
``nas-asc search``)."""

from __future__ import annotations

import dataclasses

import pytest

from nas_asc.cli import build_parser
from nas_asc.errors import NasAscError
from nas_asc.pipeline.search import SearchRequest, run_search


def test_a_request_defaults_to_what_nas_asc_search_defaults_to():
    args = build_parser().parse_args(["search", "--space", "tfsepnet"])
    request = SearchRequest("tfsepnet")
    fields = {f.name for f in dataclasses.fields(SearchRequest)}
    # every request field is a `nas-asc search` option of the same name, and only --quiet
    # (the request's progress) and the global flags are not fields
    assert sorted(set(vars(args)) - fields) == ["command", "quiet", "verbose"]
    assert {name: getattr(request, name) for name in fields - {"progress"}} == {
        name: getattr(args, name) for name in fields - {"progress"}
    }
    assert request.progress is (not args.quiet)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"train_split": "fold9"}, "unknown --train-split 'fold9'"),
        ({"budget": "bytes=0"}, "bytes"),
        ({"study": "../x"}, "--study"),
        ({"backend": "nope"}, "search backend"),
    ],
)
def test_bad_input_is_refused_before_anything_is_written(tmp_path, change, message):
    request = SearchRequest(
        "tfsepnet",
        storage=f"sqlite:///{tmp_path / 'studies' / 's.db'}",
        reports=tmp_path / "reports",
        artifacts=tmp_path / "artifacts",
        progress=False,
        **change,
    )
    said = []
    with pytest.raises(NasAscError, match=message.replace("(", r"\(")) as err:
        run_search(request, say=said.append)
    assert "\n" not in str(err.value)
    assert said == [] and list(tmp_path.iterdir()) == []
