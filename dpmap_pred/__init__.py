"""Stage 5, mesoscopic detail: UV texture -> displacement map (mm) -> detailed mesh.

- ``networks``   pix2pixHD global generator (+ PatchGAN discriminator for the optional adversarial term)
- ``encoding``   16-bit PNG <-> millimetres, encoding stored in the PNG and a sidecar JSON
- ``train.py``   training on (blended UV texture, ground-truth displacement map) pairs
- ``main.py``    inference: ``--dataroot DATA --split eval`` or ``--input DIR --output DIR``
- ``dpmap2mesh.py``  Loop subdivision of the reg mesh, displacement along its normals, mm -> units
"""
