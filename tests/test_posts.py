"""mmib/posts_mmib.py: bad posts give error rows naming the problem."""


def test_bad_posts_give_error_rows(predictor, tmp_path):
    results = predictor([{"text": "  "}, {"words": ["a", 3]}, {"text": "london", "image": str(tmp_path / "no.jpg")}])
    assert [set(result) for result in results] == [{"id", "error"}] * 3
    assert "no words" in results[0]["error"] and "'words' must be" in results[1]["error"]
    assert "no.jpg" in results[2]["error"]
