package main

import (
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

func start(t *testing.T, delay time.Duration, rate float64) *httptest.Server {
	t.Helper()
	s, err := NewServer("web-0", delay, rate)
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(s.Handler())
	t.Cleanup(ts.Close)
	return ts
}

func get(t *testing.T, ts *httptest.Server, path string) (int, string) {
	t.Helper()
	resp, err := http.Get(ts.URL + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(body)
}

// sample is one line of the text format: name{labels} value.
var sample = regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$`)

// metrics parses /metrics, failing on any line that is not a comment or a sample.
func metrics(t *testing.T, ts *httptest.Server) map[string]float64 {
	t.Helper()
	code, body := get(t, ts, "/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics: %d", code)
	}
	out := map[string]float64{}
	for _, line := range strings.Split(strings.TrimSpace(body), "\n") {
		if strings.HasPrefix(line, "# HELP ") || strings.HasPrefix(line, "# TYPE ") {
			continue
		}
		m := sample.FindStringSubmatch(line)
		if m == nil {
			t.Fatalf("not in the text format: %q", line)
		}
		v, err := strconv.ParseFloat(m[3], 64)
		if err != nil {
			t.Fatalf("value of %q: %v", line, err)
		}
		out[m[1]+m[2]] = v
	}
	return out
}

func TestRootAnswersWithItsName(t *testing.T) {
	ts := start(t, 0, 0)
	if code, body := get(t, ts, "/"); code != 200 || body != "web-0\n" {
		t.Fatalf("/: %d %q", code, body)
	}
	if code, body := get(t, ts, "/healthz"); code != 200 || body != "ok\n" {
		t.Fatalf("/healthz: %d %q", code, body)
	}
	if code, _ := get(t, ts, "/nothing/here"); code != 404 {
		t.Fatalf("unknown path: %d", code)
	}
}

func TestMetricsCountRequestsByPathAndCode(t *testing.T) {
	ts := start(t, 0, 0)
	for range 3 {
		get(t, ts, "/")
	}
	get(t, ts, "/healthz")
	get(t, ts, "/a")
	get(t, ts, "/b")
	m := metrics(t, ts)
	want := map[string]float64{
		`workload_http_requests_total{path="/",code="200"}`:                 3,
		`workload_http_requests_total{path="/healthz",code="200"}`:          1,
		`workload_http_requests_total{path="other",code="404"}`:             2, // no label per path
		`workload_http_request_duration_seconds_count{path="/"}`:            3,
		`workload_http_request_duration_seconds_bucket{path="/",le="+Inf"}`: 3,
		`workload_injected_delay_seconds`:                                   0,
		`workload_injected_error_ratio`:                                     0,
	}
	for k, v := range want {
		if got, ok := m[k]; !ok || got != v {
			t.Errorf("%s = %v (present %v), want %v", k, got, ok, v)
		}
	}
}

func TestHistogramBucketsAreCumulativeAndSeeTheDelay(t *testing.T) {
	ts := start(t, 30*time.Millisecond, 0)
	get(t, ts, "/")
	get(t, ts, "/healthz") // not delayed
	m := metrics(t, ts)
	bucket := func(path, le string) float64 {
		return m[`workload_http_request_duration_seconds_bucket{path="`+path+`",le="`+le+`"}`]
	}
	if bucket("/", "0.025") != 0 || bucket("/", "0.05") != 1 || bucket("/", "+Inf") != 1 {
		t.Errorf("/ with a 30 ms delay: le=0.025 %v, le=0.05 %v, +Inf %v",
			bucket("/", "0.025"), bucket("/", "0.05"), bucket("/", "+Inf"))
	}
	if bucket("/healthz", "0.025") != 1 {
		t.Errorf("/healthz must not be delayed: le=0.025 %v", bucket("/healthz", "0.025"))
	}
	prev := 0.0
	for _, le := range append(buckets, 0) {
		name := formatFloat(le)
		if le == 0 {
			name = "+Inf"
		}
		v := bucket("/", name)
		if v < prev {
			t.Errorf("bucket le=%s (%v) below the one before (%v)", name, v, prev)
		}
		prev = v
	}
	if sum := m[`workload_http_request_duration_seconds_sum{path="/"}`]; sum < 0.03 {
		t.Errorf("sum %v below the 30 ms delay", sum)
	}
	if d := m["workload_injected_delay_seconds"]; d != 0.03 {
		t.Errorf("workload_injected_delay_seconds = %v", d)
	}
}

func TestErrorRateFailsAnExactShare(t *testing.T) {
	ts := start(t, 0, 0.25)
	failed := 0
	for i := range 20 {
		code, _ := get(t, ts, "/")
		if code == http.StatusServiceUnavailable {
			failed++
			if i%4 != 3 {
				t.Errorf("request %d failed: want every fourth", i)
			}
		} else if code != 200 {
			t.Fatalf("request %d: %d", i, code)
		}
	}
	if failed != 5 {
		t.Fatalf("%d of 20 failed, want 5", failed)
	}
	for range 4 {
		if code, _ := get(t, ts, "/healthz"); code != 200 {
			t.Fatalf("/healthz failed: %d", code)
		}
	}
	m := metrics(t, ts)
	if v := m[`workload_http_requests_total{path="/",code="503"}`]; v != 5 {
		t.Errorf("503s counted: %v", v)
	}
}

func TestConfigSetsTheKnobsAtRunTime(t *testing.T) {
	ts := start(t, 0, 0)
	resp, err := http.PostForm(ts.URL+"/config", url.Values{"error_rate": {"1"}, "delay": {"1ms"}})
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "delay=1ms error_rate=1\n" {
		t.Fatalf("POST /config: %d %q", resp.StatusCode, body)
	}
	if code, _ := get(t, ts, "/"); code != http.StatusServiceUnavailable {
		t.Fatalf("/ with error_rate=1: %d", code)
	}
	for _, bad := range []url.Values{{"error_rate": {"1.5"}}, {"error_rate": {"x"}}, {"delay": {"-1s"}}, {"delay": {"2m"}}} {
		resp, err := http.PostForm(ts.URL+"/config", bad)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("POST /config %v: %d, want 400", bad, resp.StatusCode)
		}
	}
	if code, body := get(t, ts, "/config"); code != 200 || body != "delay=1ms error_rate=1\n" {
		t.Fatalf("GET /config after refused changes: %d %q", code, body)
	}
	req, _ := http.NewRequest(http.MethodDelete, ts.URL+"/config", nil)
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("DELETE /config: %d", resp.StatusCode)
	}
}

func TestNewServerRefusesBadKnobs(t *testing.T) {
	for _, c := range []struct {
		delay time.Duration
		rate  float64
	}{{-time.Second, 0}, {0, -0.1}, {0, 1.1}, {2 * time.Minute, 0}} {
		if _, err := NewServer("x", c.delay, c.rate); err == nil {
			t.Errorf("NewServer(%v, %v) accepted", c.delay, c.rate)
		}
	}
}

func TestBytesServesExactlyNAndRefusesBadCounts(t *testing.T) {
	ts := start(t, 0, 0)
	for _, n := range []int{0, 1, 100_000} {
		code, body := get(t, ts, "/bytes?n="+strconv.Itoa(n))
		if code != 200 || len(body) != n || strings.Trim(body, "\x00") != "" {
			t.Fatalf("/bytes?n=%d: %d, %d bytes", n, code, len(body))
		}
	}
	for _, bad := range []string{"", "-1", "x", strconv.Itoa(maxBytes + 1)} {
		if code, _ := get(t, ts, "/bytes?n="+bad); code != 400 {
			t.Fatalf("/bytes?n=%q: %d, want 400", bad, code)
		}
	}
	if m := metrics(t, ts); m[`workload_http_requests_total{path="/bytes",code="200"}`] != 3 {
		t.Fatalf("bytes requests not counted: %v", m)
	}
}
