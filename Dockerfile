# CPU image:   docker build -t faceapp .                 && docker run -p 5000:5000 faceapp
# CUDA image:  docker build -t faceapp:cuda --build-arg TORCH_VARIANT=cuda .
#              docker run --gpus all -p 5000:5000 faceapp:cuda
# (the CUDA variant installs PyPI's torch wheels, which bundle the CUDA runtime; the host needs only
#  the NVIDIA driver and the container toolkit. The service then runs the heads in fp16 on cuda:0.)
# Scale-out (REDIS_URL; compose.yaml): the same image runs the web (the default command) and the video
# workers (`faceapp worker`). Weights are baked in (models/weights, MTCNN's inside facenet-pytorch, and
# the ONNX exports made below); the image runs as the unprivileged user faceapp.

# --- front-end libraries from npm (no CDN at run time) -----------------------------------------
FROM node:20-slim AS frontend
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund --loglevel=error

# --- application ----------------------------------------------------------------------------------
FROM python:3.11-slim
ARG TORCH_VARIANT=cpu
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY requirements.txt ./
# The CPU variant takes torch's CPU-only wheels first (a few hundred MB instead of several GB);
# requirements.txt's torch==2.14.1 is then already satisfied by 2.14.1+cpu.
RUN if [ "$TORCH_VARIANT" = "cpu" ]; then \
      pip install torch==2.14.1 torchvision==0.29.1 --index-url https://download.pytorch.org/whl/cpu; \
    fi \
 && pip install -r requirements.txt
COPY --from=frontend /src/node_modules ./node_modules
COPY app ./app
COPY models ./models
COPY templates ./templates
COPY static ./static
COPY wsgi.py gunicorn.conf.py pyproject.toml README.md ./
# The faceapp command, as an editable install: the app reads its weights, pages and npm libraries from /app.
RUN pip install --no-deps -e .
# The ONNX exports of the shipped weights (the CPU backend's models), made now rather than at each start.
RUN python -c "from app.config import Config; from models.onnx_backend import exported_models; \
exported_models(Config.ONNX_DIR, Config.EMOTION_WEIGHTS, Config.AGE_GENDER_WEIGHTS)"
# /data/videos: the job folders (VIDEO_DIR); compose mounts one volume there in every web and worker
# container, and a fresh named volume takes this folder's owner.
RUN useradd --create-home --uid 10001 faceapp && mkdir -p instance /data/videos \
 && chown -R faceapp instance /data/videos
ENV VIDEO_DIR=/data/videos
USER faceapp
EXPOSE 5000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:5000/readyz').status != 200)"
# gunicorn, one worker with THREADS threads (352: the connection bounds + 32); /readyz answers 503 until the models are loaded
CMD ["faceapp", "serve", "--host", "0.0.0.0", "--port", "5000"]
