(function () {
  var blob = JSON.parse(document.getElementById('opdata').textContent);
  var data = blob.ops, states = blob.states;
  var tip = document.getElementById('tip');
  var pinned = null;
  function row(t, k, v) {
    var tr = document.createElement('tr');
    var a = document.createElement('td'); a.textContent = k;
    var b = document.createElement('td'); b.className = 'v'; b.textContent = v;
    tr.appendChild(a); tr.appendChild(b); t.appendChild(tr);
  }
  function fill(i) {
    var d = data[i];
    tip.textContent = '';
    var t = document.createElement('table');
    row(t, 'op', d[0]);
    row(t, 'process', d[1]);
    row(t, 'call', String(d[2]));
    row(t, 'return', d[3] === null ? 'none (indeterminate)' : String(d[3]));
    row(t, 'linearized', d[4] === null ? 'no' : '#' + d[4] + ' of ' + d[5]);
    if (d[6] !== null) { row(t, 'state after', states[d[6]]); }
    if (d[7]) { row(t, 'note', d[7]); }
    tip.appendChild(t);
    var x = document.createElement('div'); x.className = 'x';
    x.textContent = pinned ? 'pinned: click elsewhere or press Esc to release'
                           : 'click to pin';
    tip.appendChild(x);
  }
  function place(ev) {
    var w = tip.offsetWidth, h = tip.offsetHeight;
    var x = ev.clientX + 14, y = ev.clientY + 14;
    if (x + w > window.innerWidth - 4) { x = Math.max(4, ev.clientX - w - 14); }
    if (y + h > window.innerHeight - 4) { y = Math.max(4, ev.clientY - h - 14); }
    tip.style.left = x + 'px'; tip.style.top = y + 'px';
  }
  function target(ev) {
    var el = ev.target;
    return el && el.closest ? el.closest('[data-i]') : null;
  }
  function unpin() {
    if (pinned) { pinned.classList.remove('pin'); }
    pinned = null; tip.classList.remove('pinned'); tip.hidden = true;
  }
  document.addEventListener('mouseover', function (ev) {
    if (pinned) { return; }
    var g = target(ev);
    if (!g) { tip.hidden = true; return; }
    fill(+g.getAttribute('data-i')); tip.hidden = false; place(ev);
  });
  document.addEventListener('mousemove', function (ev) {
    if (!pinned && !tip.hidden) { place(ev); }
  });
  document.addEventListener('click', function (ev) {
    if (tip.contains(ev.target)) { return; }
    var g = target(ev);
    if (!g) { unpin(); return; }
    var same = pinned && pinned.getAttribute('data-i') === g.getAttribute('data-i');
    unpin();
    if (same) { return; }
    var i = +g.getAttribute('data-i');
    pinned = document.querySelector('.op[data-i="' + i + '"]') || g;
    pinned.classList.add('pin'); tip.classList.add('pinned');
    fill(i); tip.hidden = false; place(ev);
  });
  document.addEventListener('keydown', function (ev) {
    if (ev.key === 'Escape') { unpin(); }
  });
  // Open at the failing op: scroll its drawing there, and the page down to it when it
  // is below the first screen.
  function focus(d) {
    var s = d.querySelector('.scroll');
    if (!s || !s.clientWidth) { return; }
    s.scrollLeft = Math.max(0, +s.getAttribute('data-focus') - s.clientWidth / 2);
    var bad = s.querySelector('.op.bl, .op.bx');
    var r = bad ? bad.getBoundingClientRect() : null;
    if (r && r.bottom > window.innerHeight) {
      window.scrollBy(0, r.bottom - window.innerHeight + 60);
    }
  }
  function focusAll() {
    document.querySelectorAll('details.part').forEach(function (d) {
      if (d.open) { focus(d); }
    });
  }
  document.querySelectorAll('details.part').forEach(function (d) {
    d.addEventListener('toggle', function () { if (d.open) { focus(d); } });
  });
  // Until the reader touches the page: a frame gets its real size late (resize).
  var touched = false;
  ['wheel', 'mousedown', 'keydown', 'touchstart'].forEach(function (t) {
    window.addEventListener(t, function () { touched = true; }, {passive: true});
  });
  function early() { if (!touched) { focusAll(); } }
  early();
  window.addEventListener('load', early);
  window.addEventListener('resize', early);
  if (window.ResizeObserver) {
    var ro = new ResizeObserver(early);
    document.querySelectorAll('details.part .scroll').forEach(function (s) { ro.observe(s); });
  }
})();
