package devstack

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"
)

// The port picked for the embedded PostgreSQL is free when picked and may be taken before
// PostgreSQL binds it: StartPostgres then starts it on another port.
func TestStartPostgresMovesOffAPortTakenMeanwhile(t *testing.T) {
	if _, err := FindPGBin(); errors.Is(err, ErrNoPostgres) {
		t.Skip("no PostgreSQL server binaries here (initdb, pg_ctl): recsys dev needs them")
	}
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	takenPort := taken.Addr().(*net.TCPAddr).Port
	picks := 0
	pickPort = func() (int, error) {
		if picks++; picks == 1 {
			return takenPort, nil
		}
		return freePort()
	}
	defer func() { pickPort = freePort }()

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	p, err := StartPostgres(ctx)
	if err != nil {
		t.Fatalf("StartPostgres with its first port taken: %v", err)
	}
	defer p.Close()
	if picks != 2 || p.port == takenPort {
		t.Fatalf("picked %d ports, runs on %d (taken: %d); want a second port", picks, p.port, takenPort)
	}
}
