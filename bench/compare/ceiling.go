package main

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

// serveCeiling runs a server that speaks ClusterKit's two benchmarked KV
// routes and does nothing else: a set decodes its JSON body and answers,
// a get answers a value of valueSize bytes for any key. Three of them,
// driven by the same client as ClusterKit, measure what HTTP and JSON
// alone cost on this machine: no system whose API is JSON over HTTP/1.1
// can go faster here, so each system's share of it says how much room a
// target leaves. It stores nothing, so its gets never miss.
func serveCeiling(addr string, valueSize int) error {
	value := strings.Repeat("x", valueSize)
	mux := http.NewServeMux()
	mux.HandleFunc("POST /kv/set", func(w http.ResponseWriter, r *http.Request) {
		var in struct {
			Key   *string `json:"key"`
			Value *string `json:"value"`
		}
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 8<<20)).Decode(&in); err != nil || in.Key == nil || in.Value == nil {
			http.Error(w, `{"error":"bad request","code":"bad_request"}`, http.StatusBadRequest)
			return
		}
		writeJSON(w, map[string]string{"key": *in.Key, "status": "success"})
	})
	mux.HandleFunc("GET /kv/get", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, map[string]string{"key": r.URL.Query().Get("key"), "value": value})
	})
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}
