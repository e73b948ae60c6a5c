# roomhub chat server and the bundled quote service (same image, different command).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    ROOMHUB_HOST=0.0.0.0
# Python objects in glibc's heap, which the server trims: the memory of closed connections
# goes back to the OS (docs/memory.md).
ENV PYTHONMALLOC=malloc

WORKDIR /app
# The serve lock (make lock): the same versions, from the same files, as tested.
COPY requirements/serve.txt ./requirements/
RUN pip install --require-hashes -r requirements/serve.txt
COPY pyproject.toml README.md ./
COPY server ./server
RUN pip install --no-deps . && useradd --system --uid 10001 roomhub

USER roomhub
EXPOSE 8080 8081
CMD ["python", "-m", "server", "serve"]
