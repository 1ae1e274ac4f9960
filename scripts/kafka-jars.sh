#!/usr/bin/env bash
# Fetch the jars of the test/dev Kafka broker (tests/kafka/pom.xml: kafka_2.13 + the log4j2 binding) from Maven
# Central into .cache/kafka-<version>/ (or $KAFKA_JARS_DIR). Idempotent: when the directory holds the jar set of
# the current pom (stamp = its sha256), Maven is not run. Needs Maven and a JDK once; the tests then need only java 17+.
# CI: cache .cache/kafka-* keyed on the hash of tests/kafka/pom.xml.
set -euo pipefail
cd "$(dirname "$0")/.."

pom=tests/kafka/pom.xml
plugin=org.apache.maven.plugins:maven-dependency-plugin:3.8.1
version=$(sed -n 's:.*<kafka\.version>[[:space:]]*\([^<[:space:]]*\)[[:space:]]*</kafka\.version>.*:\1:p' "$pom")
[[ -n $version ]] || { echo "kafka-jars: no <kafka.version> in $pom" >&2; exit 1; }
dest=${KAFKA_JARS_DIR:-.cache/kafka-$version}
want=$(sha256sum "$pom" | cut -d' ' -f1)

if [[ -f $dest/.pom.sha256 && $(<"$dest/.pom.sha256") == "$want" && -f $dest/kafka_2.13-$version.jar ]]; then
    exit 0
fi

command -v mvn >/dev/null || { echo "kafka-jars: Maven (mvn) is needed once to fetch the Kafka jars: apt-get install maven" >&2; exit 1; }
command -v java >/dev/null || { echo "kafka-jars: a JDK (17+) is needed: apt-get install openjdk-17-jdk-headless" >&2; exit 1; }
java_major=$(java -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java\.specification\.version = \([0-9]*\).*/\1/p')
if [[ -n $java_major && $java_major -lt 17 ]]; then
    echo "kafka-jars: warning: java $java_major found; Kafka $version needs java 17+ to run" >&2
fi

mkdir -p "$(dirname "$dest")"
tmp=$(mktemp -d "$dest.tmp.XXXXXX")  # same filesystem as $dest: the final mv is atomic
chmod 755 "$tmp"
log=$tmp.mvn.log
trap 'rm -rf "$tmp" "$log"' EXIT
echo "kafka-jars: fetching Apache Kafka $version jars from Maven Central into $dest (once)" >&2
start=$SECONDS
# -q prints only errors, on stdout (plus stray ANSI resets): keep it for a failure
if ! mvn -B -q -f "$pom" "$plugin:copy-dependencies" -DincludeScope=runtime \
        -DoutputDirectory="$(cd "$tmp" && pwd)" >"$log" 2>&1; then
    cat "$log" >&2
    echo "kafka-jars: Maven failed (Maven Central reachable? proxy in ~/.m2/settings.xml?)" >&2
    exit 1
fi
[[ -f $tmp/kafka_2.13-$version.jar ]] || { echo "kafka-jars: Maven did not produce kafka_2.13-$version.jar" >&2; exit 1; }
echo "$want" >"$tmp/.pom.sha256"
rm -rf "$dest"
mv "$tmp" "$dest"
rm -f "$log"
trap - EXIT
echo "kafka-jars: $(ls "$dest"/*.jar | wc -l) jars, $(du -sh "$dest" | cut -f1) in $((SECONDS - start)) s" >&2
