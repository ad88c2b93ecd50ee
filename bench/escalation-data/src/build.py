import sys, glob, os, collections
M={'U':'escalate:urgent','C':'escalate:complaint','A':'escalate:anger','R':'escalate:request','K':'calm:none','N':'none'}
EXP={'escalate:urgent':10,'escalate:complaint':10,'escalate:anger':10,'escalate:request':10,'calm:none':25,'none':40}
allmsg=collections.defaultdict(list)
for f in sorted(glob.glob('*.txt')):
    trade=f[:-4]; out=[]; seen=set(); cnt=collections.Counter()
    for i,l in enumerate(open(f,encoding='utf-8').read().splitlines(),1):
        if l.startswith('#'): out.append(l); continue
        if not l.strip(): print(f,i,'EMPTY LINE'); continue
        k,m=l.split('::',1); m=m.strip()
        assert k in M,(f,i,l); assert '\t' not in m and m,(f,i)
        if m in seen: print(f,i,'DUP',m)
        seen.add(m); allmsg[m].append(trade); cnt[M[k]]+=1
        if len(m)<3 or len(m)>80: print(f,i,'LEN',len(m),m)
        out.append(M[k]+'\t'+m)
    for k,v in EXP.items():
        if cnt[k]!=v: print(f,'COUNT',k,cnt[k])
    open('../'+trade+'.tsv','w',encoding='utf-8').write('\n'.join(out)+'\n')
for m,t in allmsg.items():
    if len(t)>1: print('CROSS-DUP',m,t)
