# Varnish as a peer cache in the load benchmark (bench/load.py fills in @UPSTREAM_PORT@ and
# writes this file to its temporary directory). Everything else is Varnish's built-in VCL:
# the TTL comes from the origin's Cache-Control (public, max-age=300).
vcl 4.1;

backend origin {
    .host = "127.0.0.1";
    .port = "@UPSTREAM_PORT@";
}

sub vcl_deliver {
    # load.py checks that the measured requests are hits.
    if (obj.hits > 0) {
        set resp.http.X-Cache = "HIT";
    } else {
        set resp.http.X-Cache = "MISS";
    }
}
