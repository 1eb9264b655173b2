# Sourced: install_carried_wheels TARGET installs the wheels carried in .whl/ into the folder
# TARGET (pip --target) and puts it first on PYTHONPATH. Every .whl/*.whl goes in; one in
# .whl/if-missing/ only when the machine's Python cannot import its module (the name before the
# wheel's first "-"): compiled packages such as scipy or pydantic_core, which the machine's own
# build, matched to its numpy and Python, serves better when it has one.
install_carried_wheels() {
  local target=$1 py=${PY:-python3} w mod
  local -a wheels=()
  for w in .whl/*.whl; do [ -e "$w" ] && wheels+=("$w"); done
  for w in .whl/if-missing/*.whl; do
    [ -e "$w" ] || continue
    mod=$(basename "$w"); mod=${mod%%-*}
    "$py" -c "import $mod" 2>/dev/null || wheels+=("$w")
  done
  [ "${#wheels[@]}" -gt 0 ] || return 0
  echo "carried wheels:" $(basename -a "${wheels[@]}" | sed 's/-py3-none-any.whl//; s/-cp3.*//')
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$target" "${wheels[@]}" || return 1
  export PYTHONPATH=$target${PYTHONPATH:+:$PYTHONPATH}
}
