"""report.json's layout (render/site.readable_json): the same data as json.dumps, fewer bytes than indent=1."""

import json
import math

import pytest

from reportgen.render.site import readable_json

NESTED = {"title": "é \"quoted\" ]", "points": [[1.25, -3.0, 7, 2, 2], [0.0, 1e-9, 8, 1, 0]],
          "layers": [{"name": "conv1", "cka": [[1.0, None], [None, 1.0]], "empty": [], "none": {}}],
          "flags": [True, False, None], "nested": [[[1, 2]], [{"a": [3]}]], 4: "int key"}


def test_it_reads_back_as_the_same_data_and_keeps_leaf_lists_on_one_line():
    text = readable_json(NESTED)
    assert json.loads(text) == json.loads(json.dumps(NESTED))    # json.dumps turns the int key into "4"
    assert '\n  [1.25, -3.0, 7, 2, 2],\n' in text                 # a point: one line, indented by depth
    assert len(text) < len(json.dumps(NESTED, indent=1))


def test_it_refuses_nan_like_json_dumps_with_allow_nan_false():
    with pytest.raises(ValueError):
        readable_json({"x": [1.0, math.nan]})
