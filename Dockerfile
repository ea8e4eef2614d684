# hoopy gateway: `hoopy serve` with config and state on volumes.
FROM python:3.11-slim
RUN useradd --system --uid 10001 --home /var/lib/hoopy hoopy \
 && mkdir -p /etc/hoopy /var/lib/hoopy \
 && chown hoopy:hoopy /var/lib/hoopy
WORKDIR /opt/hoopy
COPY pyproject.toml README.md setup.py ./
COPY hoopy ./hoopy
RUN pip install --no-cache-dir . && rm -rf /root/.cache
USER hoopy
VOLUME ["/etc/hoopy", "/var/lib/hoopy"]
EXPOSE 15432 12222 16443 18080
ENTRYPOINT ["hoopy", "serve", "--config", "/etc/hoopy/hoopy.yaml"]
