# Two commands for a fresh machine:  make demo  (set up, run the pipeline on synthetic data)
#                                    make test  (set up, run the test suite)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup test demo benchmarks clean system-deps

setup: $(STAMP)

# Headless OpenGL (moderngl over EGL on Mesa llvmpipe) needs libEGL and the Mesa drivers.
system-deps:
	@if ! ldconfig -p | grep -q 'libEGL.so.1' || ! ldconfig -p | grep -q 'libGL.so.1'; then \
		echo "installing Debian packages for headless OpenGL (libegl1 libgl1 libgl1-mesa-dri)"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq libegl1 libgl1 libgl1-mesa-dri >/dev/null; \
	fi

# MediaPipe's declared dependencies pull a second OpenCV (opencv-contrib-python) and audio packages;
# the FaceLandmarker Tasks API needs neither, so mediapipe is installed with --no-deps next to the
# small packages it really imports (requirements-mediapipe.txt). One cv2 stays: opencv-python-headless.
$(STAMP): requirements.txt requirements-mediapipe.txt | system-deps
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps -r requirements-mediapipe.txt
	$(BIN)/python -c "import torch, cv2, mediapipe, trimesh, embreex, igl, moderngl; print('environment ok: torch', torch.__version__, 'cv2', cv2.__version__, 'mediapipe', mediapipe.__version__)"
	touch $(STAMP)

test: setup
	$(BIN)/python -m pytest -q tests

demo: setup
	$(BIN)/python run_pipeline.py --demo

benchmarks: setup
	for b in benchmarks/bench_*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache
	find . -name __pycache__ -prune -exec rm -rf {} +
