"""Outside models used as training-time teachers only (never at serving time).

Each runs in its own environment, outside this project's requirements, and writes its predictions for a
data set's files to one ``.npz`` keyed by file name; ``training.distill --external`` joins them to the rows.
"""
