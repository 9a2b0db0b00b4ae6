// The workload: a small HTTP server for chaos experiments on a real node.
//
//	GET  /         answers with its name (the pod's name: POD_NAME, else the host name)
//	GET  /healthz  "ok" (never delayed, never failed: probes see the process, not the knobs)
//	GET  /metrics  Prometheus text format: requests by path and code, a latency histogram,
//	               the knobs' current values
//	GET  /config   the knobs; POST /config?delay=50ms&error_rate=0.2 sets them
//	GET  /bytes?n=N  N zero bytes (at most 64 MiB): throughput seen from outside, e.g.
//	               under a bandwidth limit
//
// Two knobs act on / only: a delay added to each answer, and a share of answers failed
// with 503. The share is exact and deterministic (an accumulator, not a dice roll): with
// error_rate=0.25 every fourth request fails, so tests and state checks can count on it.
// It stops on SIGTERM or SIGINT within a few seconds (it runs as PID 1 in its image).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"math"
	"net/http"
	"os"
	"os/signal"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// buckets are the latency histogram's upper bounds, in seconds.
var buckets = []float64{0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}

// paths are the path label's values; any other path is counted as "other".
var paths = map[string]bool{
	"/": true, "/healthz": true, "/metrics": true, "/config": true, "/bytes": true,
}

// maxBytes bounds /bytes: enough to time a throughput, too little to fill a node.
const maxBytes = 64 << 20

type histogram struct {
	counts []uint64 // per bucket, not cumulative; the last one is +Inf
	sum    float64
	count  uint64
}

// Server holds the knobs and the metrics; its zero value is not usable: see NewServer.
type Server struct {
	name string

	mu        sync.Mutex
	delay     time.Duration
	errorRate float64
	errorAcc  float64
	requests  map[[2]string]uint64 // {path, code} -> count
	latency   map[string]*histogram
}

// NewServer returns a server answering / with name, with the knobs' starting values.
func NewServer(name string, delay time.Duration, errorRate float64) (*Server, error) {
	if err := checkKnobs(delay, errorRate); err != nil {
		return nil, err
	}
	return &Server{
		name: name, delay: delay, errorRate: errorRate,
		requests: map[[2]string]uint64{}, latency: map[string]*histogram{},
	}, nil
}

func checkKnobs(delay time.Duration, errorRate float64) error {
	if delay < 0 || delay > time.Minute {
		return fmt.Errorf("delay %s: must be between 0 and 1m", delay)
	}
	if math.IsNaN(errorRate) || errorRate < 0 || errorRate > 1 {
		return fmt.Errorf("error_rate %v: must be between 0 and 1", errorRate)
	}
	return nil
}

// Handler is the server's whole HTTP surface, with every request counted and timed.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/", s.root)
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("/metrics", s.metrics)
	mux.HandleFunc("/config", s.config)
	mux.HandleFunc("/bytes", serveBytes)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &recorder{ResponseWriter: w, code: http.StatusOK}
		mux.ServeHTTP(rec, r)
		s.observe(r.URL.Path, rec.code, time.Since(start))
	})
}

type recorder struct {
	http.ResponseWriter
	code int
}

func (r *recorder) WriteHeader(code int) {
	r.code = code
	r.ResponseWriter.WriteHeader(code)
}

func (s *Server) observe(path string, code int, took time.Duration) {
	if !paths[path] {
		path = "other"
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.requests[[2]string{path, strconv.Itoa(code)}]++
	h := s.latency[path]
	if h == nil {
		h = &histogram{counts: make([]uint64, len(buckets)+1)}
		s.latency[path] = h
	}
	seconds := took.Seconds()
	i := sort.SearchFloat64s(buckets, seconds) // the first bound >= seconds
	h.counts[i]++
	h.sum += seconds
	h.count++
}

// knobs returns the delay and whether this request fails, advancing the accumulator.
func (s *Server) knobs() (time.Duration, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.errorAcc += s.errorRate
	fail := s.errorAcc >= 1-1e-9
	if fail {
		s.errorAcc--
	}
	return s.delay, fail
}

func (s *Server) root(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/" {
		http.NotFound(w, r)
		return
	}
	delay, fail := s.knobs()
	if delay > 0 {
		select {
		case <-time.After(delay):
		case <-r.Context().Done():
			return
		}
	}
	if fail {
		http.Error(w, "injected failure", http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprintln(w, s.name)
}

func (s *Server) config(w http.ResponseWriter, r *http.Request) {
	switch r.Method {
	case http.MethodGet:
	case http.MethodPost:
		if err := r.ParseForm(); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		s.mu.Lock()
		delay, rate := s.delay, s.errorRate
		s.mu.Unlock()
		var err error
		if v := r.Form.Get("delay"); v != "" {
			if delay, err = time.ParseDuration(v); err != nil {
				http.Error(w, "delay: "+err.Error(), http.StatusBadRequest)
				return
			}
		}
		if v := r.Form.Get("error_rate"); v != "" {
			if rate, err = strconv.ParseFloat(v, 64); err != nil {
				http.Error(w, "error_rate: "+err.Error(), http.StatusBadRequest)
				return
			}
		}
		if err := checkKnobs(delay, rate); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		s.mu.Lock()
		s.delay, s.errorRate, s.errorAcc = delay, rate, 0
		s.mu.Unlock()
	default:
		w.Header().Set("Allow", "GET, POST")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	fmt.Fprintf(w, "delay=%s error_rate=%s\n", s.delay, formatFloat(s.errorRate))
}

func serveBytes(w http.ResponseWriter, r *http.Request) {
	n, err := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
	if err != nil || n < 0 || n > maxBytes {
		http.Error(w, fmt.Sprintf("n must be a byte count from 0 to %d", maxBytes), http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
	chunk := make([]byte, 32<<10)
	for n > 0 {
		size := min(n, int64(len(chunk)))
		if _, err := w.Write(chunk[:size]); err != nil {
			return
		}
		n -= size
	}
}

func formatFloat(v float64) string {
	if math.IsInf(v, 1) {
		return "+Inf"
	}
	return strconv.FormatFloat(v, 'g', -1, 64)
}

// WriteMetrics writes the metrics in the Prometheus text exposition format (0.0.4).
func (s *Server) WriteMetrics(w io.Writer) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var b strings.Builder
	b.WriteString("# HELP workload_http_requests_total HTTP requests answered, by path and status code.\n")
	b.WriteString("# TYPE workload_http_requests_total counter\n")
	keys := make([][2]string, 0, len(s.requests))
	for k := range s.requests {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if keys[i][0] != keys[j][0] {
			return keys[i][0] < keys[j][0]
		}
		return keys[i][1] < keys[j][1]
	})
	for _, k := range keys {
		fmt.Fprintf(&b, "workload_http_requests_total{path=%q,code=%q} %d\n", k[0], k[1], s.requests[k])
	}
	b.WriteString("# HELP workload_http_request_duration_seconds Time to answer an HTTP request, by path.\n")
	b.WriteString("# TYPE workload_http_request_duration_seconds histogram\n")
	names := make([]string, 0, len(s.latency))
	for p := range s.latency {
		names = append(names, p)
	}
	sort.Strings(names)
	for _, p := range names {
		h := s.latency[p]
		var cumulative uint64
		for i, c := range h.counts {
			cumulative += c
			le := math.Inf(1)
			if i < len(buckets) {
				le = buckets[i]
			}
			fmt.Fprintf(&b, "workload_http_request_duration_seconds_bucket{path=%q,le=%q} %d\n",
				p, formatFloat(le), cumulative)
		}
		fmt.Fprintf(&b, "workload_http_request_duration_seconds_sum{path=%q} %s\n", p, formatFloat(h.sum))
		fmt.Fprintf(&b, "workload_http_request_duration_seconds_count{path=%q} %d\n", p, h.count)
	}
	b.WriteString("# HELP workload_injected_delay_seconds The delay added to each answer of /.\n")
	b.WriteString("# TYPE workload_injected_delay_seconds gauge\n")
	fmt.Fprintf(&b, "workload_injected_delay_seconds %s\n", formatFloat(s.delay.Seconds()))
	b.WriteString("# HELP workload_injected_error_ratio The share of answers of / failed with 503.\n")
	b.WriteString("# TYPE workload_injected_error_ratio gauge\n")
	fmt.Fprintf(&b, "workload_injected_error_ratio %s\n", formatFloat(s.errorRate))
	io.WriteString(w, b.String())
}

func (s *Server) metrics(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	s.WriteMetrics(w)
}

func env(name, fallback string) string {
	if v, ok := os.LookupEnv(name); ok && v != "" {
		return v
	}
	return fallback
}

func main() {
	host, _ := os.Hostname()
	listen := flag.String("listen", env("WORKLOAD_LISTEN", ":8080"), "address to listen on (WORKLOAD_LISTEN)")
	name := flag.String("name", env("POD_NAME", host), "the name / answers with (POD_NAME, else the host name)")
	delayText := flag.String("delay", env("WORKLOAD_DELAY", "0s"), "delay added to each answer of / (WORKLOAD_DELAY)")
	rateText := flag.String("error-rate", env("WORKLOAD_ERROR_RATE", "0"), "share of answers of / failed with 503 (WORKLOAD_ERROR_RATE)")
	flag.Parse()
	log.SetFlags(0)
	log.SetPrefix("workload: ")

	delay, err := time.ParseDuration(*delayText)
	if err != nil {
		log.Fatalf("delay: %v", err)
	}
	rate, err := strconv.ParseFloat(*rateText, 64)
	if err != nil {
		log.Fatalf("error rate: %v", err)
	}
	s, err := NewServer(*name, delay, rate)
	if err != nil {
		log.Fatal(err)
	}
	srv := &http.Server{Addr: *listen, Handler: s.Handler(), ReadHeaderTimeout: 10 * time.Second}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	done := make(chan error, 1)
	go func() { done <- srv.ListenAndServe() }()
	log.Printf("%s listening on %s", *name, *listen)
	select {
	case err := <-done:
		log.Fatal(err)
	case <-ctx.Done():
	}
	shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdown); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		log.Print(err)
	}
	log.Print("stopped")
}
