"""File formats of media, in and out: the one place the API turns pixels into files and back
(mp4 here; PNG/JPEG in app/api/images.py). The engine only ever sees arrays."""
