"""The database refuses to change a signed-out report, whoever asks (app, admin, psql).

- reports_report: UPDATE or DELETE of a row whose status is already 'signed' is refused. Signing itself
  (draft -> signed) is an UPDATE of a draft row and passes.
- sections and classifications: INSERT, UPDATE or DELETE under a signed report is refused.
- versions and AI drafts: append-only always (UPDATE refused), and nothing added or removed once signed.
TRUNCATE (test flushes) fires no row triggers; production revokes it from the app's role.
"""
from django.db import migrations

SQL = """
CREATE OR REPLACE FUNCTION reports_is_signed(rid bigint) RETURNS boolean AS $$
  SELECT coalesce((SELECT status = 'signed' FROM reports_report WHERE id = rid), false);
$$ LANGUAGE sql STABLE;

CREATE OR REPLACE FUNCTION reports_section_report(sid bigint) RETURNS bigint AS $$
  SELECT report_id FROM reports_reportsection WHERE id = sid;
$$ LANGUAGE sql STABLE;

CREATE OR REPLACE FUNCTION reports_refuse(what text, rid bigint) RETURNS void AS $$
BEGIN
  RAISE EXCEPTION 'report % is signed out: % refused', rid, what USING ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql;

CREATE OR REPLACE FUNCTION reports_guard_report() RETURNS trigger AS $$
BEGIN
  IF OLD.status = 'signed' THEN
    PERFORM reports_refuse(TG_OP || ' on reports_report', OLD.id);
  END IF;
  IF TG_OP = 'DELETE' THEN RETURN OLD; END IF;
  RETURN NEW;
END;
$$ LANGUAGE plpgsql;

CREATE OR REPLACE FUNCTION reports_guard_section() RETURNS trigger AS $$
BEGIN
  IF TG_OP IN ('UPDATE', 'DELETE') AND reports_is_signed(OLD.report_id) THEN
    PERFORM reports_refuse(TG_OP || ' on ' || TG_TABLE_NAME, OLD.report_id);
  END IF;
  IF TG_OP IN ('INSERT', 'UPDATE') AND reports_is_signed(NEW.report_id) THEN
    PERFORM reports_refuse(TG_OP || ' on ' || TG_TABLE_NAME, NEW.report_id);
  END IF;
  IF TG_OP = 'DELETE' THEN RETURN OLD; END IF;
  RETURN NEW;
END;
$$ LANGUAGE plpgsql;

-- For rows that hang off a section; TG_ARGV[0] = 'append_only' also refuses every UPDATE.
CREATE OR REPLACE FUNCTION reports_guard_section_child() RETURNS trigger AS $$
DECLARE rid bigint;
BEGIN
  IF TG_OP = 'UPDATE' AND TG_NARGS > 0 AND TG_ARGV[0] = 'append_only' THEN
    RAISE EXCEPTION '% is append-only (UPDATE refused)', TG_TABLE_NAME USING ERRCODE = 'insufficient_privilege';
  END IF;
  IF TG_OP IN ('UPDATE', 'DELETE') THEN
    rid := reports_section_report(OLD.section_id);
    IF reports_is_signed(rid) THEN PERFORM reports_refuse(TG_OP || ' on ' || TG_TABLE_NAME, rid); END IF;
  END IF;
  IF TG_OP IN ('INSERT', 'UPDATE') THEN
    rid := reports_section_report(NEW.section_id);
    IF reports_is_signed(rid) THEN PERFORM reports_refuse(TG_OP || ' on ' || TG_TABLE_NAME, rid); END IF;
  END IF;
  IF TG_OP = 'DELETE' THEN RETURN OLD; END IF;
  RETURN NEW;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER reports_report_guard BEFORE UPDATE OR DELETE ON reports_report
  FOR EACH ROW EXECUTE FUNCTION reports_guard_report();
CREATE TRIGGER reports_section_guard BEFORE INSERT OR UPDATE OR DELETE ON reports_reportsection
  FOR EACH ROW EXECUTE FUNCTION reports_guard_section();
CREATE TRIGGER reports_classification_guard BEFORE INSERT OR UPDATE OR DELETE ON reports_classification
  FOR EACH ROW EXECUTE FUNCTION reports_guard_section_child();
CREATE TRIGGER reports_version_guard BEFORE INSERT OR UPDATE OR DELETE ON reports_reportversion
  FOR EACH ROW EXECUTE FUNCTION reports_guard_section_child('append_only');
CREATE TRIGGER reports_aidraft_guard BEFORE INSERT OR UPDATE OR DELETE ON reports_aidraft
  FOR EACH ROW EXECUTE FUNCTION reports_guard_section_child('append_only');
"""

REVERSE = """
DROP TRIGGER IF EXISTS reports_report_guard ON reports_report;
DROP TRIGGER IF EXISTS reports_section_guard ON reports_reportsection;
DROP TRIGGER IF EXISTS reports_classification_guard ON reports_classification;
DROP TRIGGER IF EXISTS reports_version_guard ON reports_reportversion;
DROP TRIGGER IF EXISTS reports_aidraft_guard ON reports_aidraft;
DROP FUNCTION IF EXISTS reports_guard_section_child();
DROP FUNCTION IF EXISTS reports_guard_section();
DROP FUNCTION IF EXISTS reports_guard_report();
DROP FUNCTION IF EXISTS reports_refuse(text, bigint);
DROP FUNCTION IF EXISTS reports_section_report(bigint);
DROP FUNCTION IF EXISTS reports_is_signed(bigint);
"""


class Migration(migrations.Migration):
    dependencies = [("reports", "0001_initial")]
    operations = [migrations.RunSQL(SQL, REVERSE)]
