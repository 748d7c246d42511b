package cmd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"recsys/pkg/flagenv"
)

// newHealthcheckCmd is the container HEALTHCHECK of the distroless image, which has no shell
// or curl: the binary probes the recsys process running beside it.
func newHealthcheckCmd() *cobra.Command {
	var addr, path, rawURL string
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "healthcheck",
		Short: "Probe a running recsys process over HTTP; exit 0 on a 2xx answer, 1 otherwise",
		Long: `Probe a running recsys process over HTTP and exit 0 when it answers 2xx, 1 otherwise
(connection refused, timeout, or any other status; the reason is printed on stderr).

It is the HEALTHCHECK of the container image, which has no shell or curl. By default it GETs
--path (/readyz) on 127.0.0.1 at the port of --http.addr, which it reads from the same
variables as the server (RECSYS_HTTP_ADDR, API_ADDR), so the probe follows the server's port.
--url replaces all of that with one full URL. Proxy variables (HTTP_PROXY...) are ignored:
the probe always goes straight to the process.

Examples:
  recsys healthcheck                                    # GET http://127.0.0.1:8080/readyz
  recsys healthcheck --path /healthz                    # liveness only (always 200 while serving)
  recsys healthcheck --url http://10.0.0.7:8080/readyz  # another host`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if timeout <= 0 {
				return fmt.Errorf("--timeout must be > 0, got %s", timeout)
			}
			target, err := healthcheckURL(rawURL, addr, path)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			status, err := probe(ctx, target)
			if err != nil {
				return fmt.Errorf("healthcheck %s: %w", target, err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "healthy: %s %s\n", target, status)
			return nil
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&addr, "http.addr", ":8080", "listen address of the process to probe; an empty or wildcard host means 127.0.0.1")
	fs.StringVar(&path, "path", "/readyz", "path to GET: /readyz (ready to serve) or /healthz (process alive)")
	fs.StringVar(&rawURL, "url", "", "full URL to GET instead of --http.addr and --path, e.g. http://127.0.0.1:8080/healthz")
	fs.DurationVar(&timeout, "timeout", 3*time.Second, "time allowed for the whole request")
	flagenv.Alias(fs, "http.addr", "API_ADDR")
	return cmd
}

// healthcheckURL returns rawURL when set, else http://<host of addr or 127.0.0.1>:<port><path>.
func healthcheckURL(rawURL, addr, path string) (string, error) {
	if rawURL != "" {
		u, err := url.Parse(rawURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return "", fmt.Errorf("--url must be an absolute http(s) URL, got %q", flagenv.Redact(rawURL))
		}
		return rawURL, nil
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil || port == "" {
		return "", fmt.Errorf("--http.addr must be host:port or :port, got %q", addr)
	}
	// A server listening on every interface is reached on loopback from inside its container.
	switch host {
	case "", "0.0.0.0", "::":
		host = "127.0.0.1"
	}
	if !strings.HasPrefix(path, "/") {
		return "", fmt.Errorf("--path must start with /, got %q", path)
	}
	return "http://" + net.JoinHostPort(host, port) + path, nil
}

// probe GETs target and returns its status line when the answer is 2xx.
func probe(ctx context.Context, target string) (string, error) {
	client := &http.Client{Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return "", err
	}
	resp, err := client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	// The readiness body names what is not ready; a bounded excerpt is enough for `docker inspect`.
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return "", errors.New(resp.Status + ": " + strings.TrimSpace(string(body)))
	}
	return resp.Status, nil
}
