"""The shard files: reading them (img2dataset WebDataset .tar and Parquet, local or s3://), counting and
inspecting them, and writing datasets (the synthetic scenes, real photos, Karpathy splits).

- shards.py     one shard reader: rows of {key, image, txt, json, problem, seed}, windowed seeded shuffle
- counts.py     sample counts from img2dataset stats and Parquet footers, without reading the shards
- inspect.py    `pipeline data inspect`: counts, schema, caption lengths, unreadable samples
- writer.py     shard writing (WebDataset and Parquet)
- karpathy.py   `pipeline data convert-karpathy`: a Karpathy split into shards
- synthetic.py  the bundled synthetic dataset (`pipeline data synth`) and the demo's ensure-data
- photos.py     real photos from scikit-image, scikit-learn and matplotlib as a small dataset
- typos.py      misspelt captions, for the character tower's tests and tables
"""
