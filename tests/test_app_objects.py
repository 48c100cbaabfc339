"""app.py draws the extracted objects' boxes on the post's image (unit level, no browser)."""

from PIL import Image

from conftest import load_app
from detector_folders import exif_rotated_jpeg

WHITE = (255, 255, 255)


def test_draw_objects_outlines_each_box_inside_its_pixels():
    app = load_app()
    objects = [
        {"box": [10, 5, 30, 25], "score": 0.9, "query": "cat"},
        {"box": [40, 0, 60, 40], "score": 0.5, "query": "dog"},
    ]
    drawn = app.draw_objects(Image.new("RGB", (60, 40), WHITE), objects)
    first, second = (tuple(int(app.BOX_COLOURS[i][k : k + 2], 16) for k in (1, 3, 5)) for i in (0, 1))
    # The outline (2 pixels wide) lies inside [x0, x1) x [y0, y1): x1 and y1 are exclusive, as for image.crop(box).
    assert [drawn.getpixel((x, 22)) for x in (9, 10, 11, 12, 20, 27, 28, 29, 30)] == [
        WHITE,
        first,
        first,
        WHITE,
        WHITE,
        WHITE,
        first,
        first,
        WHITE,
    ]
    assert [drawn.getpixel((20, y)) for y in (23, 24, 25)] == [first, first, WHITE]
    assert drawn.getpixel((59, 30)) == second and drawn.getpixel((39, 30)) == WHITE


def test_draw_objects_uses_the_upright_image(tmp_path):
    app = load_app()
    path = exif_rotated_jpeg(tmp_path / "rotated.jpg", (83, 41))
    assert app.draw_objects(str(path), []).size == (41, 83)
