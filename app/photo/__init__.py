"""The photo page: upload a picture, see every face boxed and described."""
from flask import Blueprint, render_template

bp = Blueprint("photo", __name__)


@bp.get("/")
def index():
    return render_template("photo.html")
