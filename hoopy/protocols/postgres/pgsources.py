"""Where a server message comes from: PostgreSQL's own code, or code hoopy cannot see.

Every ErrorResponse and NoticeResponse carries the server source file that raised it
(field F, its base name).  A message from the server's own code is composed by the
server: its text is fixed, with names and quoted values in it, which masking scrubs.
A message from anywhere else — PL/pgSQL's RAISE and ASSERT (pl_exec.c), PL/Python,
PL/Perl, a C extension — may hold any text, field and SQLSTATE its code chose, so
masking sessions withhold it whole (maskwire.mask_message_fields).

CORE_SOURCES: the source files of the PostgreSQL 15 server binary that raise messages
(the __FILE__ strings of /usr/lib/postgresql/15/bin/postgres: sources, headers with
inline code, generated parsers and scanners).  A file another server version adds is
not in it: its messages are withheld, never shown unscrubbed.  Known overlap: the
contrib module sepgsql also has a proc.c and a relation.c.
"""

from __future__ import annotations

_NAMES = """
acl.c aclchk.c aggregatecmds.c allpaths.c alter.c amapi.c amcmds.c amvalidate.c analyze.c
analyzejoins.c appendinfo.c array_expanded.c array_selfuncs.c array_typanalyze.c
array_userfuncs.c arrayfuncs.c arraysubs.c arrayutils.c ascii.c aset.c async.c attmap.c
attoptcache.c auth-sasl.c auth-scram.c auth.c autovacuum.c auxprocess.c backup_manifest.c
barrier.c basebackup.c basebackup_gzip.c basebackup_lz4.c basebackup_server.c
basebackup_target.c basebackup_zstd.c be-fsstubs.c be-gssapi-common.c be-secure-common.c
be-secure-gssapi.c be-secure-openssl.c be-secure.c bernoulli.c bgworker.c binaryheap.c
bipartite_match.c bitmapset.c bool.c bootparse.y bootscanner.l bootstrap.c brin.c
brin_bloom.c brin_inclusion.c brin_minmax.c brin_minmax_multi.c brin_pageops.c brin_revmap.c
brin_validate.c brin_xlog.c buf_table.c buffile.c bufmask.c bufmgr.c bufpage.c cash.c
catalog.c catcache.c char.c checkpointer.c chklocale.c clauses.c clog.c cluster.c
collationcmds.c combocid.c comment.c commit_ts.c condition_variable.c constraint.c
controldata_utils.c conv.c conversioncmds.c copy.c copydir.c copyfrom.c copyfromparse.c
copyfuncs.c copyto.c costsize.c createas.c createplan.c crypt.c cryptohash_openssl.c
cryptohashfuncs.c date.c datetime.c datum.c dbcommands.c dbsize.c deadlock.c decode.c
define.c dependencies.c dependency.c detoast.c dfmgr.c dict_ispell.c dict_simple.c
dict_synonym.c dict_thesaurus.c discard.c domains.c dropcmds.c dsa.c dshash.c dsm.c
dsm_impl.c dynahash.c elog.c encode.c enum.c equalfuncs.c equivclass.c event_trigger.c
evtcache.c exec.c execAmi.c execAsync.c execCurrent.c execExpr.c execExprInterp.c
execGrouping.c execIndexing.c execMain.c execParallel.c execPartition.c execProcnode.c
execReplication.c execSRF.c execScan.c execTuples.c execUtils.c expandedrecord.c explain.c
extended_stats.c extensible.c extension.c fastpath.c fd.c file_utils.c float.c fmgr.c
foreign.c foreigncmds.c format_type.c formatting.c freelist.c freepage.c freespace.c
fsmpage.c funcapi.c functioncmds.c functions.c genam.c generation.c generic_xlog.c genfile.c
geo_ops.c geo_spgist.c geqo_erx.c geqo_main.c geqo_pool.c ginarrayproc.c ginbtree.c
ginbulk.c gindatapage.c ginentrypage.c ginfast.c ginget.c gininsert.c ginscan.c ginutil.c
ginvacuum.c ginvalidate.c ginxlog.c gist.c gistbuild.c gistbuildbuffers.c gistget.c
gistproc.c gistscan.c gistsplit.c gistutil.c gistvacuum.c gistvalidate.c gistxlog.c gram.y
guc-file.l guc.c hash.c hash_xlog.c hashfunc.c hashinsert.c hashovfl.c hashpage.c
hashsearch.c hashutil.c hashvalidate.c hba.c hbafuncs.c heap.c heapam.c heapam_handler.c
heaptoast.c heaptuple.c hio.c hmac_openssl.c hyperloglog.c index.c indexam.c indexcmds.c
indextuple.c indxpath.c inet_net_pton.c inherit.c initsplan.c instrument.c int.c int8.c
integerset.c inv_api.c inval.c ipc.c ipci.c jit.c joinpath.c joinrels.c json.c jsonapi.c
jsonb.c jsonb_gin.c jsonb_op.c jsonb_util.c jsonbsubs.c jsonfuncs.c jsonpath.c
jsonpath_exec.c jsonpath_gram.y jsonpath_scan.l latch.c launcher.c levenshtein.c like.c
like_match.c like_support.c localbuf.c lock.c lockcmds.c lockfuncs.c logical.c
logicalfuncs.c logtape.c lsyscache.c lwlock.c mac.c mac8.c main.c makefuncs.c matview.c
mbutils.c mcv.c mcxt.c mcxtfuncs.c md.c message.c misc.c miscinit.c multirangetypes.c
multirangetypes_selfuncs.c multixact.c mvdistinct.c name.c namespace.c nbtdedup.c
nbtinsert.c nbtpage.c nbtree.c nbtsearch.c nbtsort.c nbtsplitloc.c nbtutils.c nbtvalidate.c
nbtxlog.c network.c network_gist.c network_selfuncs.c nodeAgg.c nodeBitmapAnd.c
nodeBitmapHeapscan.c nodeBitmapIndexscan.c nodeBitmapOr.c nodeCustom.c nodeForeignscan.c
nodeFuncs.c nodeFunctionscan.c nodeHash.c nodeHashjoin.c nodeIncrementalSort.c
nodeIndexonlyscan.c nodeIndexscan.c nodeLimit.c nodeLockRows.c nodeMemoize.c nodeMergejoin.c
nodeModifyTable.c nodeNamedtuplestorescan.c nodeNestloop.c nodeResult.c nodeSamplescan.c
nodeSetOp.c nodeSubplan.c nodeTableFuncscan.c nodeTidrangescan.c nodeTidscan.c
nodeWindowAgg.c numeric.c numutils.c objectaddress.c oid.c opclasscmds.c operatorcmds.c
oracle_compat.c orderedsetaggs.c origin.c outfuncs.c parallel.c paramassign.c parse_agg.c
parse_clause.c parse_coerce.c parse_collate.c parse_cte.c parse_expr.c parse_func.c
parse_merge.c parse_node.c parse_oper.c parse_param.c parse_relation.c parse_target.c
parse_type.c parse_utilcmd.c parser.c partbounds.c partcache.c partdesc.c partition.c
partprune.c path.c pathkeys.c pathnode.c pg_aggregate.c pg_attrdef.c pg_cast.c pg_class.c
pg_collation.c pg_constraint.c pg_controldata.c pg_conversion.c pg_depend.c pg_enum.c
pg_inherits.c pg_largeobject.c pg_locale.c pg_lsn.c pg_namespace.c pg_operator.c
pg_parameter_acl.c pg_proc.c pg_publication.c pg_sema.c pg_shdepend.c pg_shmem.c
pg_subscription.c pg_type.c pg_upgrade_support.c pgarch.c pgfnames.c pgstat.c
pgstat_function.c pgstat_replslot.c pgstat_shmem.c pgstat_xact.c pgstatfuncs.c pgtz.c
placeholder.c planagg.c plancache.c plancat.c planmain.c planner.c pmsignal.c policy.c
portalcmds.c portalmem.c postgres.c postinit.c postmaster.c pqcomm.c pqformat.c pqmq.c
pquery.c predicate.c predtest.c prepagg.c prepare.c prepjointree.c prepqual.c preptlist.c
prepunion.c print.c printsimple.c printtup.c proc.c procarray.c proclang.c procsignal.c
proto.c pruneheap.c pseudotypes.c psprintf.c publicationcmds.c queryjumble.c rangetypes.c
rangetypes_gist.c rangetypes_selfuncs.c rangetypes_spgist.c rbtree.c read.c readfuncs.c
regc_pg_locale.c regexp.c regis.c regproc.c reinit.c relation.c relcache.c relfilenodemap.c
relmapper.c relnode.c reloptions.c relpath.c reorderbuffer.c repl_gram.y repl_scanner.l
resowner.c rewriteDefine.c rewriteHandler.c rewriteManip.c rewriteRemove.c
rewriteSearchCycle.c rewriteSupport.c rewriteheap.c ri_triggers.c rls.c rmgr.c rmtree.c
rowsecurity.c rowtypes.c ruleutils.c s_lock.c scan.l scansup.c schemacmds.c scram-common.c
seclabel.c selfuncs.c sequence.c session.c setrefs.c sharedfileset.c sharedtuplestore.c
shell_archive.c shm_mq.c shm_toc.c shmem.c signalfuncs.c sinval.c sinvaladt.c slab.c slot.c
slotfuncs.c slru.c smgr.c snapbuild.c snapmgr.c sortsupport.c spccache.c spell.c
spgdoinsert.c spginsert.c spgkdtreeproc.c spgquadtreeproc.c spgscan.c spgtextproc.c
spgutils.c spgvacuum.c spgvalidate.c spgxlog.c spi.c standby.c statscmds.c storage.c
stringinfo.c subscriptioncmds.c subselect.c subtrans.c sync.c syncrep.c syncrep_gram.y
syncrep_scanner.l syscache.c syslogger.c system.c table.c tableam.c tableamapi.c tablecmds.c
tablesample.c tablespace.c tablesync.c tid.c tidbitmap.c timeline.c timeout.c timestamp.c
tlist.c to_tsany.c toast_compression.c toast_internals.c toasting.c tqueue.c transam.c
trigfuncs.c trigger.c ts_cache.c ts_locale.c ts_parse.c ts_selfuncs.c ts_typanalyze.c
ts_utils.c tsearchcmds.c tsginidx.c tsgistidx.c tsquery.c tsquery_cleanup.c tsquery_op.c
tsquery_rewrite.c tsquery_util.c tsrank.c tsvector.c tsvector_op.c tsvector_parser.c
tupdesc.c tuplesort.c tuplestore.c twophase.c typcache.c typecmds.c user.c utility.c uuid.c
vacuum.c vacuumlazy.c vacuumparallel.c var.c varbit.c varchar.c variable.c varlena.c
varsup.c view.c visibilitymap.c walreceiver.c walreceiverfuncs.c walsender.c windowfuncs.c
worker.c wparser.c wparser_def.c xact.c xid8funcs.c xlog.c xlogarchive.c xlogfuncs.c
xloginsert.c xlogprefetcher.c xlogreader.c xlogrecovery.c xlogutils.c xml.c
simplehash.h tableam.h tupmacs.h
"""
CORE_SOURCES = frozenset(_NAMES.split())


def from_server_code(fields: dict[str, str]) -> bool:
    """Was this message raised by PostgreSQL's own code (not a PL or an extension)?"""
    return fields.get("F", "") in CORE_SOURCES
