package app_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"

	"github.com/stagefleet/stagefleet/internal/testproc"
)

// TestDashboard drives the operator's dashboard in headless Chromium: the key
// form (a refused key, then the right one), then, without a reload, a host
// going live, the origin's seat count following the viewers seated, a
// replica stage appearing with its replication active, its creation among
// the fleet events, the time to seat read from /metrics, and the page
// fitting a phone, with no script error and nothing the page's
// Content-Security-Policy refused. With UPDATE_SCREENSHOTS=1 it also writes
// the screenshots the README shows (docs/img/dashboard-*.png).
func TestDashboard(t *testing.T) {
	browser := chromiumPath(t)
	const key = "dashboard-test-key"
	const broadcast = "dashboard-show"
	a := startApp(t, map[string]string{
		"API_SECRET_KEY": key,
		// Four seats a stage, two kept free ahead: the third viewer calls
		// for a replica.
		"STAGE_CAPACITY":     "4",
		"SCALE_UP_THRESHOLD": "2",
		// Viewers recorded every second, for the history chart.
		"SNAPSHOT_INTERVAL": "1s",
	})
	a.headers.Set("x-api-key", key)
	ctx, pageErrs := newBrowser(t, browser)

	run(t, ctx, "open the dashboard",
		chromedp.EmulateViewport(1280, 800),
		chromedp.Navigate(a.base+"/dashboard"),
		chromedp.WaitVisible("#api-key"),
	)
	// A marker a reload would lose: everything below must arrive live. The
	// charts, made later, must keep to the page's CSP too.
	run(t, ctx, "mark the page", chromedp.Evaluate[chromedp.Void](`window.notReloaded = true;
		window.refused = [];
		document.addEventListener('securitypolicyviolation', (e) => window.refused.push(e.violatedDirective))`))
	run(t, ctx, "enter a wrong key",
		chromedp.SendKeys("#api-key", "not-the-key"),
		chromedp.Click(`#key-form button[type="submit"]`),
	)
	waitFor(t, ctx, "the wrong key refused", `document.querySelector('#key-error').textContent.includes('refused')`)
	run(t, ctx, "enter the key",
		chromedp.SendKeys("#api-key", key),
		chromedp.Click(`#key-form button[type="submit"]`),
	)
	waitFor(t, ctx, "the connection live", `document.querySelector('#conn').dataset.state === 'live'`)
	if url := evaluate[string](t, ctx, `location.href`); strings.Contains(url, key) {
		t.Errorf("the key is in the page's URL: %s", url)
	}
	if kept := evaluate[string](t, ctx, `sessionStorage.getItem('stagefleet.apiKey')`); kept != key {
		t.Errorf("sessionStorage holds %q, want the key entered", kept)
	}

	host := a.goLive(t, broadcast, "host-1")
	origin := fmt.Sprintf(`document.querySelector('.stage[data-arn=%q]')`, host.StageArn)
	waitFor(t, ctx, "the broadcast in the list", fmt.Sprintf(`!!document.querySelector('#broadcasts tr[data-broadcast=%q]')`, broadcast))
	waitFor(t, ctx, "the origin stage with no seat taken", origin+`?.dataset.role === 'origin' && `+origin+`.querySelector('.count').textContent === '0'`)
	waitFor(t, ctx, "the host live", `document.querySelector('#b-hosts').textContent === '1'`)

	a.token(t, "viewer", map[string]any{"userId": "viewer-1", "broadcastId": broadcast})
	waitFor(t, ctx, "the origin with one seat taken", origin+`.querySelector('.count').textContent === '1'`)

	for i := 2; i <= 3; i++ {
		a.token(t, "viewer", map[string]any{"userId": fmt.Sprintf("viewer-%d", i), "broadcastId": broadcast})
	}
	waitFor(t, ctx, "the origin with three seats taken", origin+`.querySelector('.count').textContent === '3'`)
	waitFor(t, ctx, "the origin's bar three quarters full", origin+`.querySelector('.bar').getAttribute('aria-valuenow') === '3'`)
	waitFor(t, ctx, "a replica stage", `!!document.querySelector('.stage[data-role="replica"]')`)
	waitFor(t, ctx, "the host replicated into the replica",
		`!!document.querySelector('.stage[data-role="replica"] .replications .state-active')`)
	waitFor(t, ctx, "the replica's creation among the fleet events", `!!document.querySelector('#events li[data-kind="stage_created"]')`)
	// A percentile shows only once /metrics has been parsed twice and its
	// histogram holds the seats taken between.
	waitFor(t, ctx, "the time to seat from /metrics", `document.querySelector('#m-p50').textContent.endsWith('ms')`)

	if !evaluate[bool](t, ctx, `window.notReloaded === true`) {
		t.Fatal("the page was reloaded")
	}
	if refused := evaluate[[]string](t, ctx, `window.refused`); len(refused) > 0 {
		t.Errorf("the Content-Security-Policy refused what the page did: %v", refused)
	}
	pageErrs.check(t)

	shot := os.Getenv("UPDATE_SCREENSHOTS") != ""
	if shot {
		// Viewers keep coming for half a minute, so that the charts have
		// lines to show.
		for i := 4; i <= 18; i++ {
			a.token(t, "viewer", map[string]any{"userId": fmt.Sprintf("viewer-%d", i), "broadcastId": broadcast})
			time.Sleep(2 * time.Second)
		}
		// The whole page: on a desktop everything fits in little more
		// than a screen.
		screenshot(t, ctx, "dashboard-desktop.png", chromedp.FullScreenshot(100))
	}
	run(t, ctx, "turn into a phone", chromedp.EmulateViewport(390, 844, chromedp.EmulateMobile))
	waitFor(t, ctx, "the page within a phone's width", `document.documentElement.scrollWidth <= 390`)
	if shot {
		screenshot(t, ctx, "dashboard-phone.png", chromedp.CaptureScreenshot())
	}
}

// chromiumPath finds Debian's chromium, skipping the test without it
// (failing it in CI, where scripts/test installs it).
func chromiumPath(t *testing.T) string {
	t.Helper()
	path, err := exec.LookPath("chromium")
	if err != nil {
		testproc.Missing(t, "chromium is not installed: %v", err)
	}
	return path
}

// pageErrors collects the exceptions the page's scripts did not catch.
type pageErrors struct {
	mu   sync.Mutex
	errs []string
}

func (p *pageErrors) listen(ev any) {
	e, ok := ev.(*runtime.EventExceptionThrown)
	if !ok {
		return
	}
	text := e.ExceptionDetails.Text
	if ex := e.ExceptionDetails.Exception; ex != nil && ex.Description != "" {
		text = ex.Description
	}
	p.mu.Lock()
	p.errs = append(p.errs, text)
	p.mu.Unlock()
}

func (p *pageErrors) check(t *testing.T) {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, e := range p.errs {
		t.Errorf("the page threw: %s", e)
	}
}

// newBrowser starts a headless Chromium with a fresh profile for the test,
// and returns its tab's context, which ends with the test or after two
// minutes, and what the page throws.
func newBrowser(t *testing.T, path string) (context.Context, *pageErrors) {
	t.Helper()
	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(),
		chromedp.ExecPath(path),
		chromedp.Headless,
		// Tests run as root, where Chromium's sandbox cannot start.
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		// Nothing but the app under test on the network: no QUIC probes,
		// component downloads or sync.
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(t.TempDir()),
	)
	errs := &pageErrors{}
	ctx, cancelTab := chromedp.NewContext(alloc, chromedp.WithListener(errs.listen))
	ctx, cancelTimeout := context.WithTimeout(ctx, 2*time.Minute)
	t.Cleanup(func() {
		cancelTimeout()
		cancelTab()
		cancelAlloc()
	})
	return ctx, errs
}

func run(t *testing.T, ctx context.Context, what string, steps ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	if err := chromedp.Do(ctx, steps...); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

func evaluate[T any](t *testing.T, ctx context.Context, expr string) T {
	t.Helper()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		t.Fatalf("%s: %v", expr, err)
	}
	return v
}

// waitFor waits until the page makes cond true, failing the test with the
// page's text after 15 seconds.
func waitFor(t *testing.T, ctx context.Context, what, cond string) {
	t.Helper()
	_, err := chromedp.Run(ctx, chromedp.Poll[bool](cond,
		chromedp.WithPollingInterval(50*time.Millisecond), chromedp.WithPollingTimeout(15*time.Second)))
	if err != nil {
		text, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`document.body.innerText`))
		t.Fatalf("the dashboard never showed %s (%s): %v\nthe page:\n%s", what, cond, err, text)
	}
}

// screenshot writes the PNG that capture takes to docs/img/name.
func screenshot(t *testing.T, ctx context.Context, name string, capture chromedp.Action[[]byte]) {
	t.Helper()
	png, err := chromedp.Run(ctx, capture)
	if err != nil {
		t.Fatalf("screenshot %s: %v", name, err)
	}
	path := filepath.Join("..", "..", "docs", "img", name)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("wrote %s", path)
}
