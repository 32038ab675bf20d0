# Helpers shared by the load scripts (scripts/bench.sh, scripts/h2-bench.sh,
# scripts/cpu-split.sh, scripts/tail-pair.sh, scripts/pgo-build.sh).
# Sourced; each script defines its own `log`.

free_ports() {
    python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
for s in socks:
    print(s.getsockname()[1])
    s.close()
EOF
}

start_bg() {
    local logfile=$1 cpus=$2
    shift 2
    taskset -c "$cpus" "$@" >"$logfile" 2>&1 &
    LAST_PID=$!
    STARTED_PIDS+=("$LAST_PID")
}

cpu_ticks() {
    local total=0 pid child
    for pid in "$@"; do
        total=$((total + $(stat_ticks "$pid")))
        for child in $(ps -o pid= --ppid "$pid" 2>/dev/null); do
            total=$((total + $(stat_ticks "$child")))
        done
    done
    echo "$total"
}

die() { log "error: $*"; exit 1; }

# haproxy_tcp_config PORT UPSTREAM_PORT THREADS: HAProxy as a pure TCP relay
# (`mode tcp`, no HTTP work) from 127.0.0.1:PORT to 127.0.0.1:UPSTREAM_PORT.
haproxy_tcp_config() {
    cat <<EOF
global
    nbthread $3
    maxconn 4096

defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s

frontend fe
    bind 127.0.0.1:$1
    default_backend be

backend be
    server s1 127.0.0.1:$2
EOF
}

# mint_jwt SECRET ISSUER EXP_IN_SECONDS [ALG]: an HS256 JWT (ALG=none gives an
# unsigned token) with claims {"sub":"bench-user","iss":ISSUER,"exp":now+N}.
mint_jwt() {
    python3 - "$@" <<'EOF'
import base64, hashlib, hmac, json, sys, time
secret, issuer, exp_in = sys.argv[1], sys.argv[2], int(sys.argv[3])
alg = sys.argv[4] if len(sys.argv) > 4 else "HS256"

def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

def part(obj):
    return b64(json.dumps(obj, separators=(",", ":")).encode())

claims = {"sub": "bench-user", "iss": issuer, "exp": int(time.time()) + exp_in}
signing_input = part({"alg": alg, "typ": "JWT"}) + "." + part(claims)
sig = ""
if alg != "none":
    sig = b64(hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest())
print(signing_input + "." + sig)
EOF
}

# Common nginx preamble: everything under the run's temp dir. nginx_common
# DIR WORKERS [MULTI_ACCEPT]: MULTI_ACCEPT on accepts every pending connection
# per event-loop turn instead of one (nginx's default, off).
nginx_common() {
    local dir=$1 workers=$2 multi_accept=${3:-off}
    cat <<EOF
worker_processes $workers;
daemon off;
master_process on;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
worker_rlimit_nofile 65536;
events { worker_connections 8192; multi_accept $multi_accept; }
EOF
}

nginx_http_common() {
    local dir=$1
    cat <<EOF
    access_log off;
    server_tokens off;
    keepalive_timeout 75s;
    keepalive_requests 1000000;
    client_body_temp_path $dir/client_body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
EOF
}

# nginx_upstream_config DIR PORT BODY: one nginx worker answering BODY (as
# JSON) to every request on 127.0.0.1:PORT, its files under DIR.
nginx_upstream_config() {
    local dir=$1 port=$2 body=$3
    nginx_common "$dir" 1
    echo "http {"
    nginx_http_common "$dir"
    cat <<EOF
    server {
        listen 127.0.0.1:$port backlog=4096;
        location / { default_type application/json; return 200 '$body'; }
    }
}
EOF
}
