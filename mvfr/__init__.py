"""mvfr: the library shared by the stage scripts of the multi-view face reconstruction pipeline.

Modules (each holds one concern; the stage scripts at the repository root call into them):

- ``datafolder``     every path of the DATA_FOLDER and RAW trees (no other code joins path strings)
- ``atomic_io``      atomic writes of arrays, JSON, images and text; checked image reading; the in-memory
                     hand-over between stages of run_pipeline's in-process mode
- ``runtime``        device choice, seeding, environment logging, option saving, allocator tuning
- ``stage``          the per-face loop of every stage script (skip, isolate failures, summary)
- ``camera``         FaceScape ``params.json`` reading/validation, projection, rays, grid_sample convention
- ``capture``        the processed views and cameras of one face
- ``mesh_io``        OBJ (v, vt, vn, f, MTL + texture) and PLY reading and writing
- ``face_model``     the base model: the ICT face area closed over eyes, mouth and nostrils (one topology, own UV
                     chart); ``face_model_build`` makes it; ``mesh_regions`` its eye/mouth/nostril regions
- ``template``       the base model's mean face (the template) and MediaPipe's canonical face
- ``subdivision``    Loop subdivision as cached sparse operators
- ``uv_rasterizer``  texel -> (face, barycentrics) tables, attribute maps, the facial mask
- ``landmarks``      the MediaPipe FaceLandmarker wrapper
- ``triangulation``  robust multi-view landmark triangulation
- ``fitting``        the base model fitted to triangulated landmarks (stage 1), and moved onto a searched
                     surface (stage 2's refinement passes)
- ``base_maps``      position/normal maps, the surface-texel mask, ground-truth displacement
- ``visibility``     the one ray-casting rule (embree) every stage's visibility uses
- ``mvs``            stage 2: hypothesis geometry, feature sampling, cross-view aggregation, search,
                     training samples, a face's inputs (one module each)
- ``training``       checkpoints, resume, JSON-lines logs, loss curves
- ``distributed``    torchrun / DistributedDataParallel: process group, the global batch split over ranks
- ``uv_mesh``        UV-grid meshes from position maps
- ``regularisation`` score volumes, soft-argmax, refined position maps
- ``confidence``     per-texel score confidence and the smooth continuation where it is low
- ``texture``        visibility- and angle-weighted texture blending
- ``metrics``        per-stage geometric error figures in mm; ``evaluation`` applies them to a DATA_FOLDER
- ``render``         offscreen moderngl rendering; ``report`` the HTML report
- ``synthesis``      the synthetic FaceScape-layout data generator; ``preprocess`` RAW -> DATA_FOLDER
"""

__version__ = "0.1.0"
