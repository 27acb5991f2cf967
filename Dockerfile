# One image for the gateway, the admin app and the simulated nodes; docker-compose picks the command.
FROM python:3.12-slim

WORKDIR /app
COPY pyproject.toml README.md ./
COPY addons addons
COPY admin_app admin_app
COPY migrations migrations
COPY scheduler scheduler
COPY sim sim
COPY store store
COPY translators translators
COPY mitmproxy.conf ./
RUN pip install --no-cache-dir .

ENV PYTHONUNBUFFERED=1
EXPOSE 8000 8001
# The gateway, as in the README; docker-compose overrides this for the other services.
CMD ["python", "-m", "addons", "-p", "8000"]
