/* ncpaper book: a scrolling table's pinned first column casts a shadow once the table has scrolled under it; a
   printed page names the address it was read at. */
(function () {
  function mark(wrap) {
    wrap.classList.toggle('nc-scrolled', wrap.scrollLeft > 0);
    wrap.classList.toggle('nc-overflows', wrap.scrollWidth > wrap.clientWidth + 1);
  }
  function init() {
    document.querySelectorAll('.nc-table-wrap').forEach(function (wrap) {
      mark(wrap);
      wrap.addEventListener('scroll', function () { mark(wrap); }, {passive: true});
    });
    window.addEventListener('resize', function () { document.querySelectorAll('.nc-table-wrap').forEach(mark); });
    if (/^https?:$/.test(location.protocol)) {
      document.querySelectorAll('.nc-page-url').forEach(function (e) { e.textContent = location.href.split('#')[0]; });
    }
  }
  if (document.readyState === 'loading') { document.addEventListener('DOMContentLoaded', init); } else { init(); }
})();
