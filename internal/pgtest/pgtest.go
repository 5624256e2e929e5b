// Package pgtest starts real PostgreSQL servers for tests, each in its own
// temporary directory on a free loopback port, and stops them when the test
// ends.
//
// It uses Debian's PostgreSQL 15 (/usr/lib/postgresql/15/bin), or initdb and
// postgres on PATH. Without them a test is skipped, except in CI (the CI
// variable set), where it fails: scripts/test installs them, so missing
// ones there are a broken machine, not a reason to pass.
//
// initdb refuses to run as root, so as root the cluster belongs to the
// postgres user: initdb runs through runuser, and the server as that user.
package pgtest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/stagefleet/stagefleet/internal/testproc"
)

// BinDir is where Debian's postgresql package puts the server's programs.
const BinDir = "/usr/lib/postgresql/15/bin"

// Server is one PostgreSQL server with its own cluster.
type Server struct {
	t    testing.TB
	bin  string // directory of initdb and postgres
	dir  string // the cluster and the socket, removed on cleanup
	port int
	// cred runs the server as the cluster's owner when the test runs as
	// root; nil otherwise.
	cred *syscall.Credential
	cmd  *exec.Cmd
	done chan struct{}
	dbs  atomic.Int64
}

// lookBin finds the directory of initdb and postgres, skipping the test
// without them (failing it in CI).
func lookBin(t testing.TB) string {
	t.Helper()
	if _, err := os.Stat(filepath.Join(BinDir, "initdb")); err == nil {
		return BinDir
	}
	initdb, err := exec.LookPath("initdb")
	if err == nil {
		return filepath.Dir(initdb)
	}
	testproc.Missing(t, "PostgreSQL is not installed: no %s/initdb, none on PATH", BinDir)
	return ""
}

// Start makes a new cluster and starts a server on it. The server and its
// files are gone when the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	s := &Server{t: t, bin: lookBin(t)}
	if err := s.initdb(); err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	// A port found free may be taken before postgres binds it: try again.
	for attempt := 0; ; attempt++ {
		s.port = testproc.FreePort(t)
		err := s.start()
		if err == nil {
			break
		}
		if attempt == 4 {
			t.Fatalf("pgtest: starting postgres: %v", err)
		}
	}
	t.Cleanup(s.Stop)
	return s
}

func (s *Server) initdb() error {
	dir, err := os.MkdirTemp("", "pgtest-")
	if err != nil {
		return err
	}
	s.dir = dir
	s.t.Cleanup(func() { os.RemoveAll(dir) }) // after Stop: cleanups run last first
	initdb := []string{filepath.Join(s.bin, "initdb"), "-D", s.dataDir(), "-U", "postgres",
		"--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync"}
	if os.Geteuid() == 0 {
		owner, err := user.Lookup("postgres")
		if err != nil {
			return fmt.Errorf("running as root needs the postgres user (the postgresql package makes it): %w", err)
		}
		uid, _ := strconv.Atoi(owner.Uid)
		gid, _ := strconv.Atoi(owner.Gid)
		if err := os.Chown(dir, uid, gid); err != nil {
			return err
		}
		s.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		initdb = append([]string{"runuser", "-u", "postgres", "--"}, initdb...)
	}
	cmd := exec.Command(initdb[0], initdb[1:]...)
	cmd.Dir = dir // the postgres user may not enter the test's working directory
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("initdb: %w: %s", err, out)
	}
	return nil
}

func (s *Server) dataDir() string { return filepath.Join(s.dir, "data") }
func (s *Server) logFile() string { return filepath.Join(s.dir, "postgres.log") }

func (s *Server) start() error {
	logf, err := os.OpenFile(s.logFile(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close() // the child has its own descriptor
	// fsync off and no synchronous commit: a test's cluster is thrown
	// away, and waiting for the disk would only slow every test.
	s.cmd = exec.Command(filepath.Join(s.bin, "postgres"), "-D", s.dataDir(),
		"-p", strconv.Itoa(s.port), "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories="+s.dir,
		"-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
		"-c", "max_connections=200", "-c", "logging_collector=off")
	s.cmd.Dir = s.dir
	s.cmd.Stdout, s.cmd.Stderr = logf, logf
	// Its own process group, so that Stop reaches the backends too, and
	// killed with the test process if that dies first.
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: s.cred}
	testproc.BindToParent(s.cmd)
	if err := s.cmd.Start(); err != nil {
		return err
	}
	s.done = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) {
		_ = cmd.Wait()
		close(done)
	}(s.cmd, s.done)

	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		conn, err := pgx.Connect(ctx, s.URL())
		if err == nil {
			err = conn.Ping(ctx)
			conn.Close(ctx)
		}
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-s.done:
			log, _ := os.ReadFile(s.logFile())
			return fmt.Errorf("postgres exited: %s", log)
		default:
		}
		if time.Now().After(deadline) {
			s.Stop()
			return fmt.Errorf("postgres on port %d did not answer: %w", s.port, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// URL is the connection string of the database postgres, as the superuser
// postgres.
func (s *Server) URL() string { return s.urlOf("postgres") }

func (s *Server) urlOf(db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", s.port, db)
}

// NewDatabase creates an empty database and returns its connection string.
// Tests sharing one server each take a database of their own.
func (s *Server) NewDatabase(t testing.TB) string {
	t.Helper()
	name := fmt.Sprintf("test_%d", s.dbs.Add(1))
	conn, err := pgx.Connect(t.Context(), s.URL())
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(t.Context(), "CREATE DATABASE "+name); err != nil {
		t.Fatalf("pgtest: creating database %s: %v", name, err)
	}
	return s.urlOf(name)
}

// Stop stops the server (a fast shutdown, killed if that takes over 10 s)
// and waits for it to exit. The cluster is kept until the test ends, for
// Restart.
func (s *Server) Stop() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	select {
	case <-s.done:
		return
	default:
	}
	pgid := s.cmd.Process.Pid // the group's id: Setpgid made it its leader
	_ = syscall.Kill(-pgid, syscall.SIGINT)
	select {
	case <-s.done:
	case <-time.After(10 * time.Second):
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		<-s.done
	}
	// Backends outlive a killed postmaster for a moment.
	if err := syscall.Kill(-pgid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		s.t.Logf("pgtest: killing process group %d: %v", pgid, err)
	}
}

// Restart starts the server again on the same cluster and port, as after
// an outage; its data are kept.
func (s *Server) Restart() {
	s.t.Helper()
	s.Stop()
	if err := s.start(); err != nil {
		s.t.Fatalf("pgtest: restarting postgres: %v", err)
	}
}
