"""The synthetic data-set generator: parts with known defects, written in the MVTec 3D-AD layout.

`generate` (the `synth` command) plans and writes the parts; `scene` renders a part on its table, `shapes`
holds the object categories, `defects` the defect kinds and how they edit a scene.
"""
