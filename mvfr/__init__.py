"""mvfr: the library shared by the stage scripts of the multi-view face reconstruction pipeline.

Modules (each holds one concern; the stage scripts at the repository root call into them):

- ``datafolder``    every path of the DATA_FOLDER and RAW trees (no other code joins path strings)
- ``atomic_io``     atomic writes of arrays, JSON, images and text
- ``runtime``       device choice, seeding, environment logging, option saving
- ``camera``        FaceScape ``params.json`` reading/validation, projection, rays, grid_sample convention
- ``mesh_io``       OBJ (v, vt, vn, f, MTL + texture) and PLY reading and writing
- ``template``      the MediaPipe canonical face template shipped in ``predefine_data/``
- ``uv_rasterizer`` texel -> (face, barycentrics) tables and attribute maps in UV space
- ``metrics``       per-stage geometric error figures in mm
"""

__version__ = "0.1.0"
